"""Topics, subscriptions and rules as entities: create, read, list, delete; the errors for a
missing or an existing one; arguments refused before any backend is asked; and a topic's
``max_size_in_mb``."""

from __future__ import annotations

from datetime import timedelta

import pytest

from AgentOperatingSystem.messaging.errors import (
    ConfigurationError,
    EntityExistsError,
    EntityNotFoundError,
    FilterSyntaxError,
    TopicFullError,
)
from AgentOperatingSystem.messaging.servicebus_manager import ServiceBusManager
from tests.support.messages import drain_subscription as drain

pytestmark = pytest.mark.timeout(90)


async def test_topic_and_subscription_management(sb: ServiceBusManager) -> None:
    assert await sb.list_topics() == []
    created = await sb.create_topic("orders", max_size_in_mb=2048, default_message_ttl_seconds=60)
    assert created.name == "orders" and created.max_size_in_mb == 2048
    await sb.create_topic("a/b.c-d_e")
    assert [t.name for t in await sb.list_topics()] == ["a/b.c-d_e", "orders"]
    with pytest.raises(EntityExistsError):
        await sb.create_topic("orders")
    assert await sb.topic_exists("orders") and not await sb.topic_exists("missing")

    sub = await sb.create_subscription(
        "orders", "audit", max_delivery_count=4, lock_duration=timedelta(seconds=20)
    )
    assert (sub.max_delivery_count, sub.lock_duration) == (4, 20.0)
    assert (await sb.get_subscription("orders", "audit")) == sub
    with pytest.raises(EntityExistsError):
        await sb.create_subscription("orders", "audit")
    with pytest.raises(EntityNotFoundError):
        await sb.create_subscription("missing", "audit")
    with pytest.raises(FilterSyntaxError):
        await sb.create_subscription("orders", "broken", filter_rule="agent_id = ")
    assert not await sb.subscription_exists("orders", "broken")  # nothing was created
    await sb.create_subscription("orders", "billing")
    assert [s.name for s in await sb.list_subscriptions("orders")] == ["audit", "billing"]

    await sb.send_to_topic("orders", {"n": 1})
    await sb.delete_subscription("orders", "billing")
    assert [s.name for s in await sb.list_subscriptions("orders")] == ["audit"]
    with pytest.raises(EntityNotFoundError):
        await sb.receive_messages("orders", "billing", max_wait_time=0)
    await sb.create_subscription("orders", "billing")  # recreated: starts empty
    assert await drain(sb, "orders", "billing") == []

    await sb.delete_topic("orders")
    assert [t.name for t in await sb.list_topics()] == ["a/b.c-d_e"]
    with pytest.raises(EntityNotFoundError):
        await sb.send_to_topic("orders", {"n": 2})
    with pytest.raises(EntityNotFoundError):
        await sb.get_subscription("orders", "audit")
    await sb.create_topic("orders")
    await sb.create_subscription("orders", "audit")
    assert await drain(sb, "orders", "audit") == []  # the old messages went with the topic


async def test_errors_for_missing_and_existing_entities(sb: ServiceBusManager) -> None:
    with pytest.raises(EntityNotFoundError):
        await sb.get_topic("missing")
    with pytest.raises(EntityNotFoundError):
        await sb.delete_topic("missing")
    with pytest.raises(EntityNotFoundError):
        await sb.send_to_topic("missing", {"n": 1})
    with pytest.raises(EntityNotFoundError):
        await sb.create_subscription("missing", "s")
    await sb.create_topic("t")
    with pytest.raises(EntityExistsError):
        await sb.create_topic("t")
    with pytest.raises(EntityNotFoundError):
        await sb.get_subscription("t", "missing")
    with pytest.raises(EntityNotFoundError):
        await sb.delete_subscription("t", "missing")
    with pytest.raises(EntityNotFoundError):
        await sb.get_subscription_runtime_properties("t", "missing")
    with pytest.raises(EntityNotFoundError):
        await sb.receive_messages("t", "missing", max_wait_time=0)
    with pytest.raises(EntityNotFoundError):
        await sb.add_rule("t", "missing", "r", "a = 1")
    with pytest.raises(EntityNotFoundError):
        await sb.list_rules("t", "missing")
    await sb.create_subscription("t", "s")
    with pytest.raises(EntityExistsError):
        await sb.create_subscription("t", "s")
    await sb.add_rule("t", "s", "r", "a = 1")
    with pytest.raises(EntityExistsError):
        await sb.add_rule("t", "s", "r", "a = 2")
    with pytest.raises(EntityNotFoundError):
        await sb.remove_rule("t", "s", "missing")
    # What was refused changed nothing.
    assert [t.name for t in await sb.list_topics()] == ["t"]
    assert [s.name for s in await sb.list_subscriptions("t")] == ["s"]
    assert sorted(r.name for r in await sb.list_rules("t", "s")) == ["$Default", "r"]


async def test_invalid_arguments_are_refused(sb: ServiceBusManager) -> None:
    for name in ("", "-x", "x-", "a b", "x" * 261):
        with pytest.raises(ConfigurationError):
            await sb.create_topic(name)
    await sb.create_topic("t")
    for name in ("a/b", "x" * 51):
        with pytest.raises(ConfigurationError):
            await sb.create_subscription("t", name)
    with pytest.raises(ConfigurationError):
        await sb.create_subscription("t", "s", max_delivery_count=0)
    with pytest.raises(ConfigurationError):
        await sb.create_subscription("t", "s", lock_duration=0)
    with pytest.raises(ConfigurationError):
        await sb.create_topic("u", max_size_in_mb=-1)
    with pytest.raises(ConfigurationError):
        sb.receive_from_subscription("t", "s", max_wait_time=-1)
    with pytest.raises(ConfigurationError):
        await sb.receive_messages("t", "s", max_message_count=0)


async def test_a_full_topic_refuses_a_send(sb: ServiceBusManager) -> None:
    for size in (0, -1, float("inf"), "1024", True):
        with pytest.raises(ConfigurationError):
            await sb.create_topic("refused", max_size_in_mb=size)  # type: ignore[arg-type]
    assert not await sb.topic_exists("refused")

    await sb.create_topic("t", max_size_in_mb=1)
    await sb.create_subscription("t", "s")
    blob = {"data": "x" * 100_000}  # nested: not a user property, so it travels once
    sent = 0
    with pytest.raises(TopicFullError):
        for n in range(20):
            await sb.send_to_topic("t", {"n": n, "blob": blob})
            sent += 1
    assert sent == 10  # ten of about 100 kB fit in 1 MiB
    assert (await sb.get_subscription_runtime_properties("t", "s")).message_count == sent
    with pytest.raises(TopicFullError):  # still full: the refused send stored nothing
        await sb.send_to_topic("t", {"n": 99, "blob": blob})

    # Settling one message frees room for one more of the same size, and no more.
    [message] = await sb.receive_messages("t", "s", max_wait_time=5)
    await sb.complete_message(message)
    await sb.send_to_topic("t", {"n": 100, "blob": blob})
    with pytest.raises(TopicFullError):
        await sb.send_to_topic("t", {"n": 101, "blob": blob})
    got = await drain(sb, "t", "s")
    assert len(got) == sent and got[-1].content["n"] == 100
