"""Public bus API that no other test calls: ``unsubscribe``, ``reply``,
``publish(deliver_at=...)``, and the retry policy's ``max_delay`` and ``jitter`` as the bus
applies them (on the memory engine with a manual clock, so no test waits on wall time)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.brokers.memory import MemoryBroker
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.support.messages import task
from tests.support.waiting import eventually

START = 1_700_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def bus(clock: ManualClock) -> AsyncIterator[MessageBus]:
    cfg = MessageBusConfig(broker_url="memory://", poll_interval=0.01)
    async with MessageBus(cfg, clock=clock) as b:
        yield b


# ---------------------------------------------------------------------- unsubscribe


async def test_unsubscribe_stops_delivery_and_later_messages_stay_queued(bus: MessageBus) -> None:
    seen: list[int] = []

    async def handler(msg: Message) -> None:
        seen.append(msg.content["i"])

    sub = await bus.subscribe("worker", [MessageType.TASK], handler)
    await bus.publish(task(content={"i": 1}))
    await eventually(lambda: seen == [1], what="the first task handled")
    await bus.unsubscribe("worker")
    assert sub.task is not None and sub.task.done()
    assert "worker" not in bus.subscriptions

    await bus.publish(task(content={"i": 2}))
    assert await bus.queue_depth("worker") == 1
    # no consumer took it: it is still there for whoever reads the queue next
    (kept,) = await bus.get_messages("worker")
    assert kept.content == {"i": 2}
    await bus.acknowledge(kept.message_id)
    assert seen == [1]


async def test_unsubscribe_removes_event_bindings_unless_told_not_to(bus: MessageBus) -> None:
    handled: list[str] = []

    async def handler(msg: Message) -> None:
        handled.append(msg.recipient_id or "?")

    await bus.subscribe("a", [MessageType.EVENT], handler)
    await bus.subscribe("b", [MessageType.EVENT], handler)
    event = {"message_type": MessageType.EVENT, "content": {"event": "x"}}
    reached = await bus.publish(**event)  # type: ignore[arg-type]
    assert sorted(reached.recipients) == ["a", "b"]
    await eventually(lambda: len(handled) == 2, what="both handled the first event")
    await eventually(lambda: depth_is(bus.queue_depth("a"), 0), what="a's ack")
    await eventually(lambda: depth_is(bus.queue_depth("b"), 0), what="b's ack")

    await bus.unsubscribe("a")
    await bus.unsubscribe("b", unbind=False)
    after = await bus.publish(**event)  # type: ignore[arg-type]
    assert after.recipients == ("b",)
    assert await bus.queue_depth("b") == 1
    assert await bus.queue_depth("a") == 0


async def test_a_new_subscription_after_unsubscribe_takes_what_was_queued(
    bus: MessageBus,
) -> None:
    first: list[int] = []
    second: list[int] = []

    async def one(msg: Message) -> None:
        first.append(msg.content["i"])

    async def two(msg: Message) -> None:
        second.append(msg.content["i"])

    await bus.subscribe("worker", [MessageType.TASK], one)
    await bus.unsubscribe("worker")
    await bus.publish(task(content={"i": 7}))
    await bus.subscribe("worker", [MessageType.TASK], two)
    await eventually(lambda: second == [7], what="the new subscription's handler")
    assert first == []
    await eventually(lambda: depth_is(bus.queue_depth("worker"), 0), what="the ack")


async def depth_is(depth: Awaitable[int], n: int) -> bool:
    """For eventually(): whether a queue depth (awaited) is ``n``."""
    return await depth == n


# ---------------------------------------------------------------------- reply


async def test_reply_answers_a_pulled_request(bus: MessageBus) -> None:
    asking = asyncio.create_task(
        bus.request(sender_id="ceo", recipient_id="cfo", content={"q": "revenue"}, timeout=10)
    )
    query = await bus.receive("cfo", timeout=10)
    assert query is not None and query.reply_to == bus.reply_queue
    result = await bus.reply(query, {"revenue": 42}, sender_id="cfo")
    assert result is not None and result.recipients == (bus.reply_queue,)
    response = await asyncio.wait_for(asking, 10)
    assert response.message_type is MessageType.RESPONSE
    assert response.content == {"revenue": 42}
    assert response.correlation_id == query.message_id
    assert (response.sender_id, response.recipient_id) == ("cfo", "ceo")
    await bus.acknowledge(query.message_id)


async def test_reply_to_a_message_that_asks_for_none_sends_nothing(bus: MessageBus) -> None:
    await bus.publish(task("cfo", content={"q": 1}))
    (msg,) = await bus.get_messages("cfo")
    assert msg.reply_to is None
    assert await bus.reply(msg, {"a": 1}) is None
    assert await bus.queues() == ["cfo"]


async def test_reply_from_another_bus_comes_through_the_reply_queue(clock: ManualClock) -> None:
    """Two buses on one engine: the answer is stored in the requester's reply queue and
    taken by its reply listener (the consume loop), not handed over in process."""
    broker = MemoryBroker(clock)
    cfg = MessageBusConfig(broker_url="memory://", poll_interval=0.01)
    try:
        async with (
            MessageBus(cfg, broker=broker, clock=clock) as asker,
            MessageBus(cfg, broker=broker, clock=clock) as answerer,
        ):
            asking = asyncio.create_task(
                asker.request(sender_id="ceo", recipient_id="cfo", content={"q": 1}, timeout=10)
            )
            query = await answerer.receive("cfo", timeout=10)
            assert query is not None
            result = await answerer.reply(query, {"a": 2}, sender_id="cfo")
            assert result is not None and result.recipients == (asker.reply_queue,)
            response = await asyncio.wait_for(asking, 10)
            assert response.content == {"a": 2}
            assert response.correlation_id == query.message_id
            await answerer.acknowledge(query.message_id)
            await eventually(
                lambda: depth_is(asker.queue_depth(asker.reply_queue), 0),
                what="the reply queue acked",
            )
    finally:
        await broker.close()


# ---------------------------------------------------------------------- deliver_at


async def test_deliver_at_holds_a_message_until_then(bus: MessageBus, clock: ManualClock) -> None:
    at = datetime.fromtimestamp(START + 60, tz=UTC)
    result = await bus.publish(task(content={"i": 1}), deliver_at=at)
    assert result.recipients == ("worker",)
    assert await bus.queue_depth("worker") == 1
    assert await bus.get_messages("worker") == []
    clock.advance(59.5)
    assert await bus.get_messages("worker") == []
    clock.advance(0.5)
    (msg,) = await bus.get_messages("worker")
    assert msg.content == {"i": 1}


async def test_deliver_at_reaches_a_subscription_when_due(
    bus: MessageBus, clock: ManualClock
) -> None:
    handled: list[float] = []

    async def handler(msg: Message) -> None:
        handled.append(clock.now())

    await bus.subscribe("worker", [MessageType.TASK], handler)
    at = datetime.fromtimestamp(START + 30, tz=UTC)
    await bus.publish(task(content={"i": 1}), deliver_at=at)
    clock.advance(29)
    assert await bus.get_messages("worker") == []  # not yet available to anyone
    clock.advance(1)
    await eventually(lambda: handled == [START + 30], what="the handler at the due time")


async def test_deliver_at_must_be_an_aware_datetime(bus: MessageBus) -> None:
    from AgentOperatingSystem.messaging.errors import InvalidMessageError

    with pytest.raises(InvalidMessageError, match="aware datetime"):
        await bus.publish(task(), deliver_at=datetime(2030, 1, 1))
    with pytest.raises(InvalidMessageError, match="not both"):
        await bus.publish(task(), delay=1, deliver_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert await bus.queue_depth("worker") == 0


# ---------------------------------------------------------------------- retry policy


async def _redelivery_delays(
    bus: MessageBus, clock: ManualClock, expected: list[float]
) -> list[float]:
    """Nack the message each time it comes and find, with the manual clock, when it is
    available again: it must not be before ``expected[n]`` seconds, and must be then."""
    seen: list[float] = []
    last = clock.now()
    for wait in expected:
        (msg,) = await bus.get_messages("worker")
        await bus.nack(msg.message_id, error="boom")
        clock.advance(wait - 0.001)
        assert await bus.get_messages("worker") == [], f"redelivered before {wait}s"
        clock.advance(0.001)
        seen.append(clock.now() - last)
        last = clock.now()
    (msg,) = await bus.get_messages("worker")
    await bus.acknowledge(msg.message_id)
    return seen


async def test_retry_max_delay_caps_the_backoff(bus: MessageBus, clock: ManualClock) -> None:
    retry = {"max_attempts": 6, "initial_delay": 1.0, "backoff_multiplier": 10.0, "max_delay": 30}
    await bus.publish(task(), retry_policy=retry)
    # 1, 10, then 100 and 1000 capped at 30
    delays = await _redelivery_delays(bus, clock, [1.0, 10.0, 30.0, 30.0])
    assert delays == pytest.approx([1.0, 10.0, 30.0, 30.0])


async def test_retry_jitter_spreads_each_delay(
    bus: MessageBus, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws = iter([0.5, -0.25, 0.5, -0.5])
    spreads: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        spreads.append((low, high))
        return next(draws)

    monkeypatch.setattr(random, "uniform", uniform)  # what RetryPolicy.delay draws from
    retry = {
        "max_attempts": 6,
        "initial_delay": 4.0,
        "backoff_multiplier": 2.0,
        "max_delay": 10.0,
        "jitter": 0.5,
    }
    await bus.publish(task(), retry_policy=retry)
    # bases 4, 8, 10 (16 capped), 10 (32 capped), each times (1 + draw)
    expected = [6.0, 6.0, 15.0, 5.0]
    assert await _redelivery_delays(bus, clock, expected) == pytest.approx(expected)
    assert spreads == [(-0.5, 0.5)] * 4


async def test_retry_delays_apply_to_a_failing_handler(bus: MessageBus, clock: ManualClock) -> None:
    """The consume loop nacks a handler that raises with the same policy: each redelivery
    comes at its capped delay and not before; after max_attempts, the dead-letter queue."""
    calls: list[float] = []

    async def handler(msg: Message) -> None:
        calls.append(clock.now())
        raise RuntimeError("no")

    retry = {"max_attempts": 4, "initial_delay": 2.0, "backoff_multiplier": 5.0, "max_delay": 20}
    sub = await bus.subscribe("worker", [MessageType.TASK], handler)
    await bus.publish(task(), retry_policy=retry)
    for n, wait in enumerate([2.0, 10.0, 20.0], start=1):

        def settled(n: int = n) -> bool:
            return len(calls) == n and not sub.held

        await eventually(settled, what=f"call {n} settled")
        clock.advance(wait - 0.001)
        assert await bus.get_messages("worker") == [], f"redelivered before {wait}s"
        clock.advance(0.001)
    await eventually(lambda: len(calls) == 4, what="the last attempt")
    await eventually(lambda: depth_is(bus.dead_letter_depth("worker"), 1), what="the dead letter")
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps == pytest.approx([2.0, 10.0, 20.0])
    (dead,) = await bus.get_dead_letter_messages("worker")
    assert dead.metadata["aos.dead_letter.reason"] == "max_attempts"
    assert dead.metadata["aos.dead_letter.attempts"] == 4
