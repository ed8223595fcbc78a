"""Waking: ``Broker.wait(queue, None)`` has no timer of its own, and returns on a send, on a
due time the engine knows (a delayed message, a release backoff, a lock expiring) and on
close; ``Broker.prepare`` is idempotent, and ``subscribe()`` returning means ready.

On memory and sqlite time is a ManualClock: only the engine's own timer, armed on that clock,
can bring a due time; a consumer that still polled on a real-time timer would not help. On
nats ``advance`` sleeps (the server times delays and locks), and an idle wait may wake
spuriously (allowed: a missed wake-up is the bug, not a spurious one).
"""

from __future__ import annotations

import asyncio

import pytest

from AgentOperatingSystem.messaging.errors import BrokerClosedError
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.support.messages import task

from .conftest import Harness

pytestmark = pytest.mark.timeout(90)

WAKE = 5.0  # real seconds a wake-up may take at most (it takes milliseconds)


async def _parked(harness: Harness, waiter: asyncio.Task[None]) -> None:
    """Let the waiter park, and on the in-process engines check it stays parked (no
    wake-up without a cause)."""
    await asyncio.sleep(0.1)
    if harness.manual:
        assert not waiter.done(), "an idle wait(queue, None) returned with nothing to wake it"


async def test_wait_without_timeout_returns_on_a_send(harness: Harness) -> None:
    bus = await harness.bus()
    broker = bus.broker
    await broker.prepare("ceo")
    assert await bus.get_messages("ceo", 1) == []
    waiter = asyncio.create_task(broker.wait("ceo", None))
    await _parked(harness, waiter)
    await bus.publish(task("ceo", 1))
    await asyncio.wait_for(waiter, WAKE)
    (m,) = await bus.get_messages("ceo", 1)
    assert m.content == {"n": 1}


async def test_wait_returns_when_a_delayed_message_comes_due(harness: Harness) -> None:
    bus = await harness.bus()
    broker = bus.broker
    await bus.publish(task("ceo", 1), delay=1.0)
    assert await bus.get_messages("ceo", 1) == []
    waiter = asyncio.create_task(broker.wait("ceo", None))
    await _parked(harness, waiter)
    await harness.advance(1.3)
    await asyncio.wait_for(waiter, WAKE)
    (m,) = await bus.get_messages("ceo", 1)
    assert m.content == {"n": 1}


async def test_wait_returns_when_a_release_backoff_comes_due(harness: Harness) -> None:
    bus = await harness.bus()
    broker = bus.broker
    await bus.publish(task("ceo", 1))
    (m,) = await bus.get_messages("ceo", 1)
    await bus.nack(m.message_id, delay=1.0)
    assert await bus.get_messages("ceo", 1) == []
    waiter = asyncio.create_task(broker.wait("ceo", None))
    await _parked(harness, waiter)
    await harness.advance(1.3)
    await asyncio.wait_for(waiter, WAKE)
    (again,) = await bus.get_messages("ceo", 1)
    assert again.message_id == m.message_id


async def test_wait_returns_when_a_lock_expires(harness: Harness) -> None:
    bus = await harness.bus(lock_seconds=1.0)
    broker = bus.broker
    await bus.publish(task("ceo", 1))
    (m,) = await bus.get_messages("ceo", 1)  # locked, never settled
    assert await bus.get_messages("ceo", 1) == []
    waiter = asyncio.create_task(broker.wait("ceo", None))
    await _parked(harness, waiter)
    await harness.advance(1.3)
    await asyncio.wait_for(waiter, WAKE)
    (again,) = await bus.get_messages("ceo", 1)
    assert again.message_id == m.message_id


async def test_wait_with_a_timeout_still_times_out(harness: Harness) -> None:
    bus = await harness.bus()
    await bus.broker.prepare("ceo")
    await asyncio.wait_for(bus.broker.wait("ceo", 0.05), WAKE)


async def test_closing_the_engine_wakes_a_waiter(harness: Harness) -> None:
    bus = await harness.bus()
    broker = bus.broker
    await broker.prepare("ceo")
    waiter = asyncio.create_task(broker.wait("ceo", None))
    await _parked(harness, waiter)
    await bus.stop()  # the bus owns the engine: closes it
    try:
        await asyncio.wait_for(waiter, WAKE)
    except BrokerClosedError:
        pass


async def test_prepare_is_idempotent(harness: Harness) -> None:
    bus = await harness.bus()
    broker = bus.broker
    for _ in range(3):
        await broker.prepare("ceo")
    await bus.publish(task("ceo", 1))
    await broker.prepare("ceo")  # prepared again with a message waiting: nothing lost
    assert await bus.queue_depth("ceo") == 1
    (m,) = await bus.get_messages("ceo", 5)
    assert m.content == {"n": 1}


async def test_an_idle_subscription_handles_a_delayed_message_when_it_comes_due(
    harness: Harness,
) -> None:
    bus = await harness.bus()
    seen: list[int] = []
    await bus.subscribe("ceo", [MessageType.TASK], lambda m: seen.append(m.content["n"]))
    await bus.publish(task("ceo", 1), delay=1.0)
    await asyncio.sleep(0.1)
    assert seen == []
    await harness.advance(1.3)
    await harness.eventually(lambda: seen == [1], timeout=WAKE)


async def test_a_retried_handler_runs_again_when_its_backoff_comes_due(harness: Harness) -> None:
    bus = await harness.bus()
    calls: list[int] = []

    def handler(m: Message) -> None:
        calls.append(m.content["n"])
        if len(calls) == 1:
            raise RuntimeError("first time fails")

    await bus.subscribe("ceo", [MessageType.TASK], handler)
    policy = {"max_attempts": 3, "initial_delay": 1.0, "backoff_multiplier": 1.0}
    await bus.publish(task("ceo", 1), retry_policy=policy)
    await harness.eventually(lambda: calls == [1], timeout=WAKE)
    await asyncio.sleep(0.1)
    assert calls == [1]  # backing off
    await harness.advance(1.3)
    await harness.eventually(lambda: calls == [1, 1], timeout=WAKE)

    async def settled() -> bool:
        return await bus.queue_depth("ceo") == 0

    await harness.eventually(settled, timeout=WAKE)


async def test_subscribe_returning_means_ready_for_another_bus(harness: Harness) -> None:
    consumer = await harness.bus()
    # memory:// is private to each bus: there the producer is the same bus
    producer = consumer if harness.engine == "memory" else await harness.bus()
    seen: list[int] = []
    await consumer.subscribe("ceo", [MessageType.TASK], lambda m: seen.append(m.content["n"]))
    await producer.publish(task("ceo", 1))
    await harness.eventually(lambda: seen == [1], timeout=WAKE)


async def test_closing_a_stream_ends_a_read_waiting_on_it(harness: Harness) -> None:
    bus = await harness.bus()
    stream = await bus.stream_events().__aenter__()
    reading = asyncio.create_task(stream.__anext__())
    await asyncio.sleep(0.1)
    assert not reading.done()
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reading, WAKE)
