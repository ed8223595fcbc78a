"""Requests handed straight to a live consumer on NATS (``hand_off``), and every way such a
request leaves that consumer without being lost: answered on the same trip, retried from the
durable queue, dead-lettered, put back at stop, or swept back when nobody picks it up."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.brokers.base import Envelope
from AgentOperatingSystem.messaging.brokers.nats import NatsBroker, create_nats_broker
from AgentOperatingSystem.messaging.brokers.nats.handoff import HANDOFF_ACTIVE_SECONDS
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import ManualClock, SystemClock
from AgentOperatingSystem.messaging.errors import RequestFailedError
from AgentOperatingSystem.messaging.metadata import DLQ_ATTEMPTS, DLQ_ERROR, DLQ_REASON
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.brokers.test_nats_bus import Worker
from tests.support.waiting import eventually

pytestmark = pytest.mark.nats


def config(url: str, **extra: Any) -> MessageBusConfig:
    return MessageBusConfig(broker_url=url, storage_url="memory://", **extra)


def spy_on_sends(bus: MessageBus) -> list[str]:
    """Record the queue of every envelope the bus stores through its engine."""
    stored: list[str] = []
    send = bus.broker.send

    async def spy(envelopes: Any, **kw: Any) -> list[bool]:
        stored.extend(e.queue for e in envelopes)
        return await send(envelopes, **kw)

    bus.broker.send = spy  # type: ignore[method-assign]
    return stored


async def warmed_up(asker: MessageBus, answerer: MessageBus) -> tuple[NatsBroker, int]:
    """Have ``answerer``'s consumer of "cfo" answer one request (it is then live and caught
    up); return ``answerer``'s engine and the handoffs it took so far."""
    await asker.request(recipient_id="cfo", content={}, timeout=10)
    broker = answerer.broker
    assert isinstance(broker, NatsBroker)
    return broker, broker.handoffs_taken


async def test_a_request_is_handed_to_a_consumer_in_another_process(nats_engine_url: str) -> None:
    worker = Worker(nats_engine_url, "cfo")
    await worker.start()
    try:
        async with MessageBus(config(nats_engine_url)) as bus:
            first = await bus.request(recipient_id="cfo", content={"n": 0}, timeout=20)
            stored = spy_on_sends(bus)
            for n in range(1, 6):
                answer = await bus.request(recipient_id="cfo", content={"n": n}, timeout=20)
                assert answer.content == {"echo": n, "pid": worker.pid}
            assert first.content["pid"] == worker.pid
            assert stored == []  # neither the requests nor their answers were stored
            assert await bus.queue_depth("cfo") == 0
            assert await bus.queue_depth(bus.reply_queue) == 0
    finally:
        await worker.stop()
    assert sorted(worker.handled) == list(range(6))  # each handled once


async def test_two_consumer_processes_of_one_agent_never_both_take_a_request(
    nats_engine_url: str,
) -> None:
    workers = [Worker(nats_engine_url, "cfo"), Worker(nats_engine_url, "cfo")]
    await asyncio.gather(*(w.start() for w in workers))
    try:
        async with MessageBus(config(nats_engine_url)) as bus:
            answers = await asyncio.gather(
                *(bus.request(recipient_id="cfo", content={"n": n}, timeout=20) for n in range(30))
            )
            assert [a.content["echo"] for a in answers] == list(range(30))
            assert {a.content["pid"] for a in answers} <= {w.pid for w in workers}
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
    handled = workers[0].handled + workers[1].handled
    assert sorted(handled) == list(range(30))  # every request handled, none twice


async def test_a_request_is_handed_to_a_consumer_of_the_same_process(nats_engine_url: str) -> None:
    async with MessageBus(config(nats_engine_url)) as bus:
        broker = bus.broker
        assert isinstance(broker, NatsBroker)

        async def cfo(m: Message) -> dict[str, int]:
            return {"answer": m.content["q"] * 2}

        await bus.subscribe("cfo", [MessageType.QUERY], cfo)
        await bus.request(recipient_id="cfo", content={"q": 0}, timeout=10)
        stored = spy_on_sends(bus)
        taken = broker.handoffs_taken
        for q in range(1, 4):
            answer = await bus.request(recipient_id="cfo", content={"q": q}, timeout=10)
            assert answer.content == {"answer": q * 2}
        assert stored == []
        assert broker.handoffs_taken == taken + 3


async def test_direct_requests_false_stores_every_request(nats_engine_url: str) -> None:
    async with (
        MessageBus(config(nats_engine_url, direct_requests=False)) as asker,
        MessageBus(config(nats_engine_url)) as answerer,
    ):

        async def cfo(m: Message) -> dict[str, int]:
            return {"answer": m.content["q"]}

        await answerer.subscribe("cfo", [MessageType.QUERY], cfo)
        stored = spy_on_sends(asker)
        for q in range(3):
            answer = await asker.request(recipient_id="cfo", content={"q": q}, timeout=10)
            assert answer.content == {"answer": q}
        assert stored == ["cfo", "cfo", "cfo"]
        assert isinstance(answerer.broker, NatsBroker)
        assert answerer.broker.handoffs_taken == 0


async def test_a_failing_handed_off_request_is_retried_from_the_queue_then_dead_lettered(
    nats_engine_url: str,
) -> None:
    """The handed-off attempt counts: with max_attempts=2 the handler runs twice (once
    handed off, once from the durable queue), and the dead letter says 2 attempts."""
    policy = {"max_attempts": 2, "initial_delay": 0.05}
    async with (
        MessageBus(config(nats_engine_url)) as asker,
        MessageBus(config(nats_engine_url, default_retry_policy=policy)) as answerer,
    ):
        calls: list[str] = []

        async def cfo(m: Message) -> dict[str, str]:
            calls.append(m.message_id)
            if m.content.get("fail"):
                raise RuntimeError(f"boom {len(calls)}")
            return {"ok": "yes"}

        await answerer.subscribe("cfo", [MessageType.QUERY], cfo)
        broker, taken = await warmed_up(asker, answerer)
        with pytest.raises(RequestFailedError) as failed:
            await asker.request(recipient_id="cfo", content={"fail": True}, timeout=20)
        assert broker.handoffs_taken == taken + 1  # the first attempt was handed off
        assert failed.value.reason == "max_attempts"
        assert len(calls) == 3 and calls[1] == calls[2]
        [dead] = await answerer.get_dead_letter_messages("cfo")
        assert dead.message_id == calls[1]
        assert dead.metadata[DLQ_REASON] == "max_attempts"
        assert dead.metadata[DLQ_ATTEMPTS] == 2
        assert "boom 3" in dead.metadata[DLQ_ERROR]


async def test_stop_puts_a_handoff_held_by_a_stuck_handler_back_in_the_queue(
    nats_engine_url: str,
) -> None:
    async with MessageBus(config(nats_engine_url)) as asker:
        stuck = MessageBus(config(nats_engine_url, shutdown_timeout=0.2))
        await stuck.start()
        started = asyncio.Event()

        async def hang(m: Message) -> dict[str, str]:
            if m.content.get("hang"):
                started.set()
                await asyncio.Event().wait()  # never returns; cancelled at stop
            return {"by": "stuck"}

        await stuck.subscribe("cfo", [MessageType.QUERY], hang)
        broker, taken = await warmed_up(asker, stuck)
        pending = asyncio.create_task(
            asker.request(recipient_id="cfo", content={"hang": True}, timeout=30)
        )
        await asyncio.wait_for(started.wait(), 10)
        assert broker.handoffs_taken == taken + 1
        await stuck.stop()
        assert await asker.queue_depth("cfo") == 1  # back in the durable queue

        async def answer(m: Message) -> dict[str, str]:
            return {"by": "second"}

        async with MessageBus(config(nats_engine_url)) as second:
            await second.subscribe("cfo", [MessageType.QUERY], answer)
            response = await asyncio.wait_for(pending, 20)
        assert response.content == {"by": "second"}


@pytest.fixture
def clock() -> ManualClock:
    """The consumer's clock: its handoff window and sweep move only when a test says so."""
    return ManualClock()


@pytest_asyncio.fixture
async def brokers(nats_engine_url: str, clock: ManualClock) -> AsyncIterator[list[NatsBroker]]:
    """Two engines (two connections: two processes as far as NATS can tell): the consumer
    on ``clock``, the sender on the system clock."""
    pair = [await create_nats_broker(nats_engine_url, clock=c) for c in (clock, SystemClock())]
    try:
        yield pair
    finally:
        for broker in pair:
            await broker.close()


async def consuming(broker: NatsBroker, queue: str) -> None:
    """Make ``broker`` a caught-up consumer of ``queue`` that waited on it just now."""
    assert await broker.receive(queue, 10, 30) == []
    await broker.wait(queue, 0.01)


async def test_a_quick_answer_rides_back_on_the_handoff_and_is_never_lost(
    brokers: list[NatsBroker],
) -> None:
    consumer, sender = brokers
    await consuming(consumer, "cfo")
    got: list[bytes] = []

    async def listener(body: bytes) -> bool:
        got.append(body)
        return True

    await sender.listen_direct("_reply.listening", listener)
    for reply_queue, answer in (("_reply.listening", b"a1"), ("_reply.gone", b"a2")):
        message_id = f"m-{reply_queue}"
        offer = asyncio.create_task(
            sender.hand_off(Envelope("cfo", message_id, 2, b"{}"), reply_queue=reply_queue)
        )
        await consumer.wait("cfo", 5)  # woken by the handoff
        [delivery] = await consumer.receive("cfo", 10, 30)
        assert delivery.message_id == message_id and delivery.attempts == 1
        assert await consumer.send_direct(
            Envelope(reply_queue, f"r-{message_id}", 2, answer), reply_for=message_id
        )
        assert await asyncio.wait_for(offer, 5) is True
        assert await consumer.ack("cfo", [delivery]) == [True]
        await consumer.wait("cfo", 0.01)
    assert got == [b"a1"]  # the listener took the first answer
    # nobody listened for the second: it was stored in its reply queue, not dropped
    assert await sender.depth("_reply.gone") == 1
    [stored] = await sender.receive("_reply.gone", 10, 30)
    assert stored.body == b"a2" and stored.message_id == "r-m-_reply.gone"
    assert await consumer.depth("cfo") == 0


async def test_an_unclaimed_handoff_goes_to_the_durable_queue(
    brokers: list[NatsBroker], clock: ManualClock
) -> None:
    consumer, sender = brokers
    consumer.handoff_grace = 0.05
    await consuming(consumer, "cfo")
    # taken, never received: swept into the queue, and the sender told "taken"
    assert await sender.hand_off(Envelope("cfo", "m1", 1, b'{"x":1}'), wait=0.5) is True

    async def queued() -> bool:
        clock.advance(consumer.handoff_grace)  # the sweep runs on the consumer's clock
        return await sender.depth("cfo") == 1

    await eventually(queued, 10, "the unclaimed handoff in the queue")
    [delivery] = await sender.receive("cfo", 10, 30)
    assert (delivery.message_id, delivery.body, delivery.attempts) == ("m1", b'{"x":1}', 1)
    assert delivery.priority == 1
    assert await sender.ack("cfo", [delivery]) == [True]


async def test_a_released_handoff_keeps_its_attempt_and_error(brokers: list[NatsBroker]) -> None:
    consumer, sender = brokers
    await consuming(consumer, "cfo")
    offer = asyncio.create_task(sender.hand_off(Envelope("cfo", "m1", 2, b"{}"), wait=0.5))
    await consumer.wait("cfo", 5)  # woken by the handoff
    [delivery] = await consumer.receive("cfo", 10, 30)
    assert await consumer.renew("cfo", [delivery], 30) == [True]
    assert await consumer.release("cfo", delivery, error="boom") is True
    assert await asyncio.wait_for(offer, 5) is True  # told "taken" at the release
    assert await consumer.release("cfo", delivery) is False  # settled once
    [again] = await sender.receive("cfo", 10, 30)
    assert (again.message_id, again.attempts, again.last_error) == ("m1", 2, "boom")
    assert await sender.dead_letter("cfo", again, reason="max_attempts", error="boom") is True
    [dead] = await sender.dead_letters("cfo")
    assert (dead.message_id, dead.attempts, dead.reason) == ("m1", 2, "max_attempts")


async def test_a_handoff_is_declined_when_the_consumer_is_behind_busy_or_absent(
    brokers: list[NatsBroker], clock: ManualClock
) -> None:
    consumer, sender = brokers
    # absent: nobody consumes the queue anywhere (the server says "no responders")
    assert await sender.hand_off(Envelope("nobody", "m0", 2, b"{}"), wait=0.5) is False
    # behind: messages are queued that the consumer has not taken yet
    await consuming(consumer, "cfo")
    await sender.send([Envelope("cfo", f"q{i}", 2, b"{}") for i in range(2)])
    await consumer.wait("cfo", 1.0)  # woken by the publish
    assert await sender.hand_off(Envelope("cfo", "m1", 2, b"{}"), wait=0.5) is False
    first = await consumer.receive("cfo", 1, 30)
    assert [d.message_id for d in first] == ["q0"]
    assert await sender.hand_off(Envelope("cfo", "m2", 2, b"{}"), wait=0.5) is False
    # busy: caught up, but it has not waited on the queue for longer than it would take
    rest = await consumer.receive("cfo", 10, 30)
    assert [d.message_id for d in rest] == ["q1"]
    clock.advance(HANDOFF_ACTIVE_SECONDS + 0.1)  # that long without a wait: a long handler
    assert await sender.hand_off(Envelope("cfo", "m3", 2, b"{}"), wait=0.5) is False
    assert await consumer.ack("cfo", first + rest) == [True, True]
    assert consumer.handoffs_taken == 0


async def test_close_puts_taken_handoffs_back_in_the_queue(brokers: list[NatsBroker]) -> None:
    consumer, sender = brokers
    await consuming(consumer, "cfo")
    offers = [
        asyncio.create_task(sender.hand_off(Envelope("cfo", f"m{i}", 2, b"{}"), wait=1.0))
        for i in range(2)
    ]
    await eventually(lambda: consumer.handoffs_taken == 2, 5, "both handoffs taken")
    [held] = await consumer.receive("cfo", 1, 30)  # one received, one still waiting
    assert held.message_id in ("m0", "m1")
    await consumer.close()
    assert await asyncio.gather(*offers) == [True, True]
    assert await sender.depth("cfo") == 2


async def test_the_handoff_window_runs_on_the_engine_clock(
    brokers: list[NatsBroker], clock: ManualClock
) -> None:
    """A consumer is live for HANDOFF_ACTIVE_SECONDS on its clock after it received or
    waited: a handoff inside the window is taken, one after it declined, whatever the wall
    clock says."""
    consumer, sender = brokers
    await consuming(consumer, "cfo")
    clock.advance(HANDOFF_ACTIVE_SECONDS)  # the edge of the window: still live
    assert await sender.hand_off(Envelope("cfo", "m1", 2, b"{}"), wait=0.5) is True
    [first] = await consumer.receive("cfo", 10, 30)
    assert first.message_id == "m1"
    assert await consumer.ack("cfo", [first]) == [True]
    assert await consumer.receive("cfo", 10, 30) == []  # caught up, and live from now
    clock.advance(HANDOFF_ACTIVE_SECONDS + 0.01)  # idle past the window
    assert await sender.hand_off(Envelope("cfo", "m2", 2, b"{}"), wait=0.5) is False
    await consumer.wait("cfo", 0.01)  # waiting again: live
    assert await sender.hand_off(Envelope("cfo", "m3", 2, b"{}"), wait=0.5) is True
    [third] = await consumer.receive("cfo", 10, 30)
    assert third.message_id == "m3"
    assert await consumer.ack("cfo", [third]) == [True]
    assert consumer.handoffs_taken == 2
    assert await sender.depth("cfo") == 0  # m2 was declined, not stored by the engine
