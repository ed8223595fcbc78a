"""The contract every engine passes: the same cases on memory, sqlite and nats."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from AgentOperatingSystem.messaging.brokers.base import (
    Broker,
    DirectDelivery,
    Envelope,
    LocalPut,
)
from AgentOperatingSystem.messaging.brokers.memory import MemoryBroker
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.codec.envelope import encode
from AgentOperatingSystem.messaging.errors import (
    QueueFullError,
    RequestFailedError,
    RequestTimeoutError,
    RoutingError,
    UnknownMessageError,
)
from AgentOperatingSystem.messaging.types import Message, MessagePriority, MessageType
from tests.support.messages import task

from .conftest import Harness

pytestmark = pytest.mark.timeout(90)


async def served_and_acknowledged(bus: MessageBus, agent: str, limit: int) -> list[int]:
    """The ``n`` of each message ``get_messages`` hands ``agent`` (up to ``limit``), in the
    order served; every one of them is then acknowledged."""
    got = await bus.get_messages(agent, limit=limit)
    for m in got:
        await bus.acknowledge(m.message_id)
    return [m.content["n"] for m in got]


async def test_priority_order_then_fifo(harness: Harness) -> None:
    bus = await harness.bus()
    prios = [
        MessagePriority.LOW,
        MessagePriority.CRITICAL,
        MessagePriority.NORMAL,
        MessagePriority.CRITICAL,
        MessagePriority.BACKGROUND,
        MessagePriority.HIGH,
        MessagePriority.LOW,
        MessagePriority.NORMAL,
    ]
    for i, p in enumerate(prios):
        await bus.publish(task("ceo", i, priority=p))
    expected = sorted(range(len(prios)), key=lambda i: (prios[i].value, i))
    assert await served_and_acknowledged(bus, "ceo", 20) == expected
    assert await bus.queue_depth("ceo") == 0


async def test_lock_expiry_redelivers(harness: Harness) -> None:
    bus = await harness.bus(lock_seconds=1.0)
    await bus.publish(task("ceo", 1))
    first = await bus.get_messages("ceo", 5)
    assert [m.content["n"] for m in first] == [1]
    assert await bus.get_messages("ceo", 5) == []  # locked
    await harness.advance(1.3)
    again = await bus.get_messages("ceo", 5)
    assert [m.message_id for m in again] == [first[0].message_id]
    await bus.acknowledge(again[0].message_id)
    await harness.advance(1.3)
    assert await bus.get_messages("ceo", 5) == []
    assert await bus.queue_depth("ceo") == 0


async def test_a_message_back_from_an_expired_lock_keeps_its_place(harness: Harness) -> None:
    """Back in the queue, a message is served before later arrivals of its priority and
    after anything of a higher priority, as if it had never left."""
    bus = await harness.bus(lock_seconds=1.0)
    await bus.publish(task("ceo", 1))
    await bus.publish(task("ceo", 2))
    (first,) = await bus.get_messages("ceo", 1)
    assert first.content["n"] == 1
    await bus.publish(task("ceo", 3))
    await bus.publish(task("ceo", 4, priority=MessagePriority.HIGH))
    await harness.advance(1.3)
    assert await served_and_acknowledged(bus, "ceo", 10) == [4, 1, 2, 3]
    assert await bus.queue_depth("ceo") == 0


async def test_ack_after_lock_expired_is_refused(harness: Harness) -> None:
    from AgentOperatingSystem.messaging.errors import LockLostError

    bus = await harness.bus(lock_seconds=1.0)
    await bus.publish(task("ceo", 1))
    (m,) = await bus.get_messages("ceo", 1)
    await harness.advance(1.3)
    with pytest.raises(LockLostError):
        await bus.acknowledge(m.message_id)
    assert await bus.queue_depth("ceo") == 1  # still there, nothing lost


async def test_nack_with_exponential_backoff(harness: Harness) -> None:
    bus = await harness.bus()
    policy = {"max_attempts": 5, "initial_delay": 1.0, "backoff_multiplier": 2.0}
    await bus.publish(task("ceo", 1), retry_policy=policy)
    (m,) = await bus.get_messages("ceo", 1)
    await bus.nack(m.message_id, error="boom")
    assert await bus.get_messages("ceo", 1) == []  # backing off 1s
    await harness.advance(1.3)
    (m2,) = await bus.get_messages("ceo", 1)
    assert m2.message_id == m.message_id
    await bus.nack(m2.message_id)
    await harness.advance(1.3)
    assert await bus.get_messages("ceo", 1) == []  # second backoff is 2s
    await harness.advance(1.0)
    (m3,) = await bus.get_messages("ceo", 1)
    await bus.acknowledge(m3.message_id)


async def test_dead_letter_after_max_attempts_then_resubmit(harness: Harness) -> None:
    bus = await harness.bus()
    policy = {"max_attempts": 2, "initial_delay": 0.2, "backoff_multiplier": 1.0}
    await bus.publish(task("ceo", 7), retry_policy=policy)
    (m,) = await bus.get_messages("ceo", 1)
    await bus.nack(m.message_id, error=ValueError("first failure"))
    await harness.advance(0.4)
    (m,) = await bus.get_messages("ceo", 1)
    await bus.nack(m.message_id, error=ValueError("last failure"))
    await harness.advance(0.4)
    assert await bus.get_messages("ceo", 1) == []
    assert await bus.queue_depth("ceo") == 0
    dead = await bus.get_dead_letter_messages("ceo")
    assert [d.content["n"] for d in dead] == [7]
    meta = dead[0].metadata
    assert meta["aos.dead_letter.reason"] == "max_attempts"
    assert "last failure" in meta["aos.dead_letter.error"]
    assert meta["aos.dead_letter.attempts"] == 2
    await bus.resubmit(dead[0])
    assert await bus.get_dead_letter_messages("ceo") == []
    (back,) = await bus.get_messages("ceo", 1)
    assert back.content == {"n": 7} and "aos.dead_letter.reason" not in back.metadata
    await bus.acknowledge(back.message_id)


async def test_ttl_expiry_goes_to_dead_letter_queue(harness: Harness) -> None:
    bus = await harness.bus()
    await bus.publish(task("ceo", 1, ttl=1))
    await bus.publish(task("ceo", 2))
    await harness.advance(1.3)
    got = await bus.get_messages("ceo", 5)
    assert [m.content["n"] for m in got] == [2]
    dead = await bus.get_dead_letter_messages("ceo")
    assert [(d.content["n"], d.metadata["aos.dead_letter.reason"]) for d in dead] == [
        (1, "expired")
    ]


async def test_default_ttl_from_config(harness: Harness) -> None:
    bus = await harness.bus(message_ttl_seconds=1)
    await bus.publish(task("ceo", 1))
    await harness.advance(1.3)
    assert await bus.get_messages("ceo", 5) == []
    assert len(await bus.get_dead_letter_messages("ceo")) == 1


async def test_dedup_window(harness: Harness) -> None:
    bus = await harness.bus(dedup_window_seconds=2.0)
    first = await bus.publish(task("ceo", 1), delivery_mode="exactly_once", idempotency_key="k1")
    second = await bus.publish(task("ceo", 2), delivery_mode="exactly_once", idempotency_key="k1")
    assert first.recipients == ("ceo",) and not first.duplicate
    assert second.duplicate and second.recipients == ()
    assert await bus.queue_depth("ceo") == 1
    await harness.advance(2.5)
    third = await bus.publish(task("ceo", 3), delivery_mode="exactly_once", idempotency_key="k1")
    assert not third.duplicate
    assert await bus.queue_depth("ceo") == 2


async def test_depth_counts_ready_locked_and_delayed(harness: Harness) -> None:
    bus = await harness.bus()
    for i in range(3):
        await bus.publish(task("ceo", i))
    await bus.publish(task("ceo", 9), delay=5)
    assert await bus.queue_depth("ceo") == 4
    got = await bus.get_messages("ceo", 2)
    assert len(got) == 2
    assert await bus.queue_depth("ceo") == 4
    await bus.acknowledge(got[0].message_id)
    assert await bus.queue_depth("ceo") == 3
    assert await bus.queue_depth("nobody") == 0


async def test_delayed_delivery(harness: Harness) -> None:
    bus = await harness.bus()
    await bus.publish(task("ceo", 1), delay=1.0)
    assert await bus.get_messages("ceo", 1) == []
    await harness.advance(1.3)
    (m,) = await bus.get_messages("ceo", 1)
    assert m.content == {"n": 1}


async def test_full_queue_refuses_loudly_and_drops_nothing(harness: Harness) -> None:
    bus = await harness.bus(max_queue_size=3)
    for i in range(3):
        await bus.publish(task("ceo", i))
    with pytest.raises(QueueFullError):
        await bus.publish(task("ceo", 3))
    with pytest.raises(QueueFullError):
        await bus.publish_batch([task("cfo", 0), task("ceo", 4)])
    assert await bus.queue_depth("ceo") == 3
    if harness.engine != "nats":  # nats checks depth per message: documented, not atomic
        assert await bus.queue_depth("cfo") == 0
    got = await bus.get_messages("ceo", 10)
    assert sorted(m.content["n"] for m in got) == [0, 1, 2]


async def test_publish_batch_reaches_each_recipient(harness: Harness) -> None:
    bus = await harness.bus()
    results = await bus.publish_batch([task("a", 1), task("b", 2), task("a", 3)])
    assert [r.recipients for r in results] == [("a",), ("b",), ("a",)]
    assert [m.content["n"] for m in await bus.get_messages("a", 5)] == [1, 3]
    assert [m.content["n"] for m in await bus.get_messages("b", 5)] == [2]


async def test_handler_ack_on_return_retry_then_dead_letter_on_raise(harness: Harness) -> None:
    bus = await harness.bus(default_retry_policy={"max_attempts": 3, "initial_delay": 0.0})
    seen: list[tuple[int, int]] = []

    async def handler(msg: Message) -> None:
        seen.append((msg.content["n"], len(seen)))
        if msg.content["n"] == 13:
            raise RuntimeError("unlucky")

    await bus.subscribe("worker", [MessageType.TASK], handler)
    await bus.publish(task("worker", 1))
    await bus.publish(task("worker", 13))
    await harness.eventually(lambda: bus.dead_letter_depth("worker"))
    await harness.eventually(lambda: _is_zero(bus.queue_depth("worker")))
    assert [n for n, _ in seen].count(13) == 3
    assert [n for n, _ in seen].count(1) == 1
    (dead,) = await bus.get_dead_letter_messages("worker")
    assert dead.metadata["aos.dead_letter.reason"] == "max_attempts"
    assert "RuntimeError: unlucky" in dead.metadata["aos.dead_letter.error"]


async def _is_zero(value: Any) -> bool:
    return (await value) == 0


async def test_message_of_unhandled_type_is_dead_lettered_not_lost(harness: Harness) -> None:
    bus = await harness.bus()

    async def handler(msg: Message) -> None:
        return None

    await bus.subscribe("worker", [MessageType.TASK], handler)
    await bus.publish(
        Message(message_type=MessageType.STATUS, sender_id="x", recipient_id="worker")
    )
    await harness.eventually(lambda: bus.dead_letter_depth("worker"))
    (dead,) = await bus.get_dead_letter_messages("worker")
    assert dead.metadata["aos.dead_letter.reason"] == "no_handler"


async def test_events_fan_out_to_every_subscriber(harness: Harness) -> None:
    bus = await harness.bus()
    got: dict[str, list[str]] = {"a": [], "b": [], "c": []}

    def make(agent: str) -> Any:
        async def handler(msg: Message) -> None:
            got[agent].append(msg.content["event"])

        return handler

    await bus.subscribe("a", [MessageType.EVENT], make("a"))
    await bus.subscribe("b", [MessageType.EVENT, MessageType.TASK], make("b"))
    await bus.subscribe("c", [MessageType.TASK], make("c"))
    result = await bus.publish(message_type=MessageType.EVENT, content={"event": "ready"})
    assert sorted(result.recipients) == ["a", "b"]
    await harness.eventually(lambda: got["a"] and got["b"])
    assert got == {"a": ["ready"], "b": ["ready"], "c": []}


async def test_task_without_recipient_or_route_is_refused(harness: Harness) -> None:
    bus = await harness.bus()
    with pytest.raises(RoutingError):
        await bus.publish(message_type=MessageType.TASK, content={"x": 1})


async def test_request_response_and_timeout(harness: Harness) -> None:
    bus = await harness.bus()

    async def cfo(msg: Message) -> dict[str, Any]:
        return {"revenue": 1200, "asked": msg.content["query"]}

    await bus.subscribe("cfo_agent", [MessageType.QUERY], cfo)
    response = await bus.request(
        sender_id="orchestrator", recipient_id="cfo_agent", content={"query": "Q2"}, timeout=10
    )
    assert response.message_type is MessageType.RESPONSE
    assert response.content == {"revenue": 1200, "asked": "Q2"}
    assert response.sender_id == "cfo_agent"
    with pytest.raises(RequestTimeoutError) as info:
        await bus.request(recipient_id="nobody_home", content={"q": 1}, timeout=0.2)
    assert isinstance(info.value, TimeoutError)


async def test_request_to_a_failing_handler_fails_fast(harness: Harness) -> None:
    bus = await harness.bus(default_retry_policy={"max_attempts": 1})

    async def broken(msg: Message) -> dict[str, Any]:
        raise ValueError("no data")

    await bus.subscribe("cfo_agent", [MessageType.QUERY], broken)
    with pytest.raises(RequestFailedError) as info:
        await bus.request(recipient_id="cfo_agent", content={"q": 1}, timeout=10)
    assert info.value.reason == "max_attempts"
    assert len(await bus.get_dead_letter_messages("cfo_agent")) == 1


async def test_at_most_once_is_never_redelivered(harness: Harness) -> None:
    bus = await harness.bus()
    await bus.publish(task("ceo", 1), delivery_mode="at_most_once")
    (m,) = await bus.get_messages("ceo", 1)
    assert await bus.queue_depth("ceo") == 0
    with pytest.raises(UnknownMessageError):
        await bus.nack(m.message_id)
    await harness.advance(1.5)
    assert await bus.get_messages("ceo", 1) == []


async def test_exactly_once_outbox_commits_with_the_ack(harness: Harness) -> None:
    bus = await harness.bus(default_retry_policy={"max_attempts": 5, "initial_delay": 0.0})
    calls = 0

    async def handler(msg: Message) -> None:
        nonlocal calls
        calls += 1
        await bus.publish(task("downstream", calls))
        if calls == 1:
            raise RuntimeError("crash after publishing")

    await bus.subscribe("worker", [MessageType.TASK], handler)
    await bus.publish(task("worker", 1), delivery_mode="exactly_once", idempotency_key="job-1")
    await harness.eventually(lambda: bus.queue_depth("downstream"))
    await harness.eventually(lambda: _is_zero(bus.queue_depth("worker")))
    got = await bus.get_messages("downstream", 10)
    # The failed first run's publish was discarded with its nack; only the second's landed.
    assert [m.content["n"] for m in got] == [2]
    assert calls == 2


async def test_exactly_once_key_already_processed_skips_the_handler(harness: Harness) -> None:
    bus = await harness.bus(dedup_window_seconds=2.0)
    calls: list[int] = []

    async def handler(msg: Message) -> None:
        calls.append(msg.content["n"])

    await bus.subscribe("worker", [MessageType.TASK], handler)
    await bus.publish(task("worker", 1), delivery_mode="exactly_once", idempotency_key="once")
    await harness.eventually(lambda: calls)
    await harness.eventually(lambda: _is_zero(bus.queue_depth("worker")))
    # Past the publish dedup window, a second copy with the same key gets in, but the
    # processed-key record (kept with the ack) stops it reaching the handler again.
    await harness.advance(2.5)
    await bus.publish(task("worker", 2), delivery_mode="exactly_once", idempotency_key="once")
    await harness.eventually(lambda: _is_zero(bus.queue_depth("worker")))
    assert calls == [1]


async def test_undecodable_bytes_go_to_dead_letter_queue_and_consumer_keeps_running(
    harness: Harness,
) -> None:
    bus = await harness.bus()
    got: list[int] = []

    async def handler(msg: Message) -> None:
        got.append(msg.content["n"])

    await bus.subscribe("worker", None, handler)
    await bus.publish(task("worker", 1))
    await bus.broker.send([Envelope("worker", "garbage-1", 2, body=b"\x00not json{")])
    await bus.broker.send([Envelope("worker", "garbage-2", 2, body=b'{"specversion":"1.0"}')])
    await bus.publish(task("worker", 2))
    await harness.eventually(lambda: len(got) == 2)
    await harness.eventually(lambda: _equals(bus.dead_letter_depth("worker"), 2))
    dead = await bus.get_dead_letter_messages("worker")
    assert {d.message_id for d in dead} == {"garbage-1", "garbage-2"}
    assert {d.metadata["aos.dead_letter.reason"] for d in dead} == {"undecodable"}
    assert all("raw_base64" in d.content for d in dead)


async def _equals(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def test_hop_limit_stops_loops(harness: Harness) -> None:
    bus = await harness.bus(hop_limit=3)

    async def ping(msg: Message) -> None:
        await bus.publish(task("pong", msg.content["n"] + 1))

    async def pong(msg: Message) -> None:
        await bus.publish(task("ping", msg.content["n"] + 1))

    await bus.subscribe("ping", [MessageType.TASK], ping)
    await bus.subscribe("pong", [MessageType.TASK], pong)
    await bus.publish(task("ping", 0))

    async def dead_total() -> int:
        return await bus.dead_letter_depth("ping") + await bus.dead_letter_depth("pong")

    await harness.eventually(dead_total)
    dead = await bus.get_dead_letter_messages("ping") + await bus.get_dead_letter_messages("pong")
    assert [d.metadata["aos.dead_letter.reason"] for d in dead] == ["hop_limit"]
    assert dead[0].content["n"] == 4


async def test_stream_events_filters_and_cleans_up(harness: Harness) -> None:
    bus = await harness.bus()
    stream = bus.stream_events(event_types=["task_completed"])
    got: list[str] = []

    async def consume() -> None:
        async for event in stream:
            got.append(event.content["task_id"])
            if len(got) == 2:
                break

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(stream.ready.wait(), 10)
    await bus.publish(message_type=MessageType.EVENT, content={"event": "noise", "task_id": "x"})
    await bus.publish(
        message_type=MessageType.EVENT, content={"event": "task_completed", "task_id": "t1"}
    )
    await bus.publish(
        message_type=MessageType.EVENT, content={"event_type": "task_completed", "task_id": "t2"}
    )
    await asyncio.wait_for(consumer, 10)
    assert got == ["t1", "t2"]
    await stream.aclose()
    result = await bus.publish(message_type=MessageType.EVENT, content={"event": "task_completed"})
    assert stream.queue not in result.recipients


async def test_resubmit_unknown_dead_letter_is_a_clear_error(harness: Harness) -> None:
    bus = await harness.bus()
    with pytest.raises(UnknownMessageError):
        await bus.resubmit("no-such-id", agent_id="ceo")


async def test_late_response_reaches_the_requesters_own_queue(harness: Harness) -> None:
    """A response that comes after request() gave up is not lost: it goes to the requester's
    agent queue (on NATS the direct hand-over is refused and the durable path takes it)."""
    bus = await harness.bus()
    release = asyncio.Event()

    async def slow_cfo(msg: Message) -> dict[str, Any]:
        await release.wait()
        return {"revenue": 42}

    await bus.subscribe("cfo_agent", [MessageType.QUERY], slow_cfo)
    with pytest.raises(RequestTimeoutError):
        await bus.request(sender_id="ceo_agent", recipient_id="cfo_agent", content={"q": 1},
                          timeout=0.2)
    release.set()
    await harness.eventually(lambda: bus.queue_depth("ceo_agent"))
    (late,) = await bus.get_messages("ceo_agent")
    assert late.message_type is MessageType.RESPONSE
    assert late.content == {"revenue": 42}


def _dead_envelope(queue: str, message: Message) -> Envelope:
    return Envelope(queue, message.message_id, message.priority.value, body=encode(message))


async def test_put_dead_letter_stores_it_dead_and_resubmit_makes_it_deliverable(
    harness: Harness,
) -> None:
    """A message that failed before it reached its queue (a network send that gave up) is
    put straight into the queue's dead-letter queue: listed, counted, never delivered."""
    bus = await harness.bus()
    broker = bus.broker
    msg = task("ceo", 5)
    env = _dead_envelope("ceo", msg)
    assert await broker.put_dead_letter(env, reason="unreachable", error="refused", attempts=3)
    (dead,) = await broker.dead_letters("ceo")
    assert (dead.queue, dead.message_id, dead.reason, dead.error, dead.attempts) == (
        "ceo",
        msg.message_id,
        "unreachable",
        "refused",
        3,
    )
    assert await broker.depth("ceo") == 0
    assert await broker.dead_letter_depth("ceo") == 1
    assert await broker.receive("ceo", 10, 1.0) == []
    await harness.advance(1.3)
    assert await broker.receive("ceo", 10, 1.0) == []  # not merely delayed: never deliverable
    (seen,) = await bus.get_dead_letter_messages("ceo")
    assert seen.content == {"n": 5}
    assert seen.metadata["aos.dead_letter.reason"] == "unreachable"
    assert seen.metadata["aos.dead_letter.attempts"] == 3

    assert await broker.resubmit("ceo", msg.message_id)
    assert await broker.dead_letter_depth("ceo") == 0
    assert await broker.depth("ceo") == 1
    (back,) = await broker.receive("ceo", 10, 30.0)
    assert (back.message_id, back.attempts) == (msg.message_id, 1)  # attempts reset
    assert await broker.ack("ceo", [back]) == [True]
    assert await broker.depth("ceo") == 0


async def test_put_dead_letter_of_an_id_already_dead_is_refused(harness: Harness) -> None:
    bus = await harness.bus()
    broker = bus.broker
    first = task("ceo", 1)
    twin = task("ceo", 2, message_id=first.message_id)
    assert await broker.put_dead_letter(_dead_envelope("ceo", first), reason="unreachable")
    assert not await broker.put_dead_letter(_dead_envelope("ceo", twin), reason="other")
    (dead,) = await broker.dead_letters("ceo")  # the first, untouched
    assert (dead.reason, dead.error, dead.attempts) == ("unreachable", None, 0)
    (seen,) = await bus.get_dead_letter_messages("ceo")
    assert seen.content == {"n": 1}
    # a dead letter of the same id in another queue is another dead letter
    assert await broker.put_dead_letter(_dead_envelope("cfo", twin), reason="unreachable")
    assert await broker.dead_letter_depth("cfo") == 1
    assert await broker.dead_letter_depth("ceo") == 1


async def test_optional_capabilities_are_declared_by_type(harness: Harness) -> None:
    bus = await harness.bus()
    broker = bus.broker
    assert isinstance(broker, Broker)
    assert isinstance(broker, LocalPut) is (harness.engine == "memory")
    assert isinstance(broker, DirectDelivery) is (harness.engine == "nats")


def test_the_memory_engine_takes_local_puts() -> None:
    local: LocalPut = MemoryBroker()  # checked statically too
    assert isinstance(local, LocalPut)
