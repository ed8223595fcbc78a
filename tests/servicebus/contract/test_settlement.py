"""Peek-lock: a received message is locked until it is completed, abandoned (redelivered,
then dead-lettered after ``max_delivery_count``) or dead-lettered; the dead-letter queue is
listed, resubmitted and purged; receivers end as documented."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from AgentOperatingSystem.messaging.errors import BrokerClosedError, UnknownMessageError
from AgentOperatingSystem.messaging.servicebus_manager import ServiceBusManager, servicebus_info
from AgentOperatingSystem.messaging.types import Message
from tests.support.messages import drain_subscription as drain

from .conftest import Backend

pytestmark = pytest.mark.timeout(90)


async def test_peek_lock_holds_a_message_until_it_is_settled(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    await sb.send_to_topic("t", {"n": 1})
    [first] = await sb.receive_messages("t", "s", max_wait_time=5)
    info = servicebus_info(first)
    assert isinstance(info["lock_token"], str) and info["delivery_count"] == 1
    assert await sb.receive_messages("t", "s", max_wait_time=0) == []  # locked
    assert (await sb.get_subscription_runtime_properties("t", "s")).message_count == 1

    await sb.abandon_message(first)
    [second] = await sb.receive_messages("t", "s", max_wait_time=5)
    assert second.content == {"n": 1} and servicebus_info(second)["delivery_count"] == 2
    assert await sb.renew_message_lock(second) > datetime.now(UTC)
    await sb.dead_letter_message(second, reason="BadInput", error_description="why")
    assert await sb.receive_messages("t", "s", max_wait_time=0) == []
    runtime = await sb.get_subscription_runtime_properties("t", "s")
    assert (runtime.message_count, runtime.dead_letter_message_count) == (0, 1)
    [dead] = await sb.receive_dead_letters("t", "s")
    dead_info = servicebus_info(dead)
    assert dead.content == {"n": 1} and dead_info["lock_token"] is None
    assert (dead_info["dead_letter_reason"], dead_info["dead_letter_error_description"]) == (
        "BadInput",
        "why",
    )

    await sb.send_to_topic("t", {"n": 2})
    [third] = await sb.receive_messages("t", "s", max_wait_time=5)
    await sb.complete_message(third)
    assert await sb.receive_messages("t", "s", max_wait_time=0) == []
    assert (await sb.get_subscription_runtime_properties("t", "s")).message_count == 0


async def test_dead_letters_are_readable_and_resubmittable(backend: Backend) -> None:
    sb = backend.manager
    await sb.create_topic("t")
    await sb.create_subscription("t", "s", filter_rule="keep = TRUE")
    await sb.create_subscription("t", "other")
    await sb.send_to_topic("t", {"keep": True, "n": 1})
    await sb.send_to_topic("t", {"keep": False, "n": 2})
    [message] = await sb.receive_messages("t", "s", max_wait_time=5)
    await sb.dead_letter_message(message, reason="BadInput", error_description="n is odd")

    assert await drain(sb, "t", "s") == []
    [dead] = await sb.receive_dead_letters("t", "s")
    assert dead.content == {"keep": True, "n": 1}
    assert dead.metadata["aos.dead_letter.reason"] == "BadInput"
    assert servicebus_info(dead)["dead_letter_error_description"] == "n is odd"
    assert (await sb.get_subscription_runtime_properties("t", "s")).dead_letter_message_count == 1
    with pytest.raises(UnknownMessageError):
        await sb.complete_message(dead)  # a dead letter read from the DLQ holds no lock

    await sb.resubmit_dead_letter(dead)
    assert await sb.receive_dead_letters("t", "s") == []
    [again] = await drain(sb, "t", "s")
    assert again.content == {"keep": True, "n": 1}
    assert servicebus_info(again)["delivery_count"] == 1
    with pytest.raises(UnknownMessageError):
        await sb.resubmit_dead_letter(dead)  # already resubmitted
    # The other subscription was not affected by the dead-lettering; by the resubmission
    # only where a resubmitted copy goes through the topic's rules again (Azure).
    expected = [1, 1, 2] if backend.resubmit_reroutes else [1, 2]
    assert sorted(m.content["n"] for m in await drain(sb, "t", "other")) == expected

    for n in range(3):
        await sb.send_to_topic("t", {"keep": True, "n": 10 + n})
    for message in await sb.receive_messages("t", "s", max_message_count=3, max_wait_time=5):
        await sb.dead_letter_message(message)
    assert len(await sb.receive_dead_letters("t", "s", max_messages=2)) == 2
    assert await sb.resubmit_dead_letters("t", "s") == 3
    received = await drain(sb, "t", "s", complete=False)
    assert sorted(m.content["n"] for m in received) == [10, 11, 12]
    for message in received:
        await sb.dead_letter_message(message)
    assert await sb.purge_dead_letters("t", "s") == 3
    assert await sb.receive_dead_letters("t", "s") == []


async def test_abandon_redelivers_then_dead_letters(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s", max_delivery_count=3)
    await sb.send_to_topic("t", {"n": 1})
    counts = []
    for _ in range(3):
        [message] = await sb.receive_messages("t", "s", max_wait_time=5)
        counts.append(servicebus_info(message)["delivery_count"])
        await sb.abandon_message(message)
    assert counts == [1, 2, 3]
    assert await sb.receive_messages("t", "s", max_wait_time=0.1) == []
    [dead] = await sb.receive_dead_letters("t", "s")
    assert servicebus_info(dead)["dead_letter_reason"] == "MaxDeliveryCountExceeded"
    assert dead.metadata["aos.dead_letter.reason"] == "MaxDeliveryCountExceeded"


async def test_settling_twice_or_a_foreign_message_fails(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    await sb.send_to_topic("t", {"n": 1})
    [message] = await sb.receive_messages("t", "s", max_wait_time=5)
    await sb.complete_message(message)
    with pytest.raises(UnknownMessageError):
        await sb.complete_message(message)
    with pytest.raises(UnknownMessageError):
        await sb.abandon_message(Message(content={"n": 1}))


async def test_receiver_iteration_ends_as_documented(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    for n in range(3):
        await sb.send_to_topic("t", {"n": n})
    seen = []
    async for message in sb.receive_from_subscription("t", "s", max_messages=2):
        seen.append(message.content["n"])
        await sb.complete_message(message)
    assert seen == [0, 1]
    async for message in sb.receive_from_subscription("t", "s", max_wait_time=0.2):
        seen.append(message.content["n"])
        await sb.complete_message(message)
    assert seen == [0, 1, 2]  # then 0.2 s without a message ended it

    receiver = sb.receive_from_subscription("t", "s")
    waiting = asyncio.create_task(receiver.__anext__())
    await asyncio.sleep(0.1)
    await sb.send_to_topic("t", {"n": 3})
    message = await asyncio.wait_for(waiting, 10)
    assert message.content == {"n": 3}
    await sb.complete_message(message)
    async with receiver:
        pass
    with pytest.raises(StopAsyncIteration):
        await receiver.__anext__()


async def test_closing_ends_receivers_and_refuses_work(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    receiver = sb.receive_from_subscription("t", "s")
    waiting = asyncio.create_task(receiver.__anext__())
    await asyncio.sleep(0.05)  # the receiver is waiting for a message
    await sb.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 10)
    assert sb.closed
    with pytest.raises(BrokerClosedError):
        await sb.send_to_topic("t", {"n": 1})
    with pytest.raises(BrokerClosedError):
        await sb.start()
