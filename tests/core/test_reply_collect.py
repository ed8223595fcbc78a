"""Reply queues of requesters that are gone are collected within a documented bound.

An answer sent to a reply queue carries ``reply_ttl_seconds`` as its TTL, and every bus sweeps
the reply queues of other buses every ``reply_ttl_seconds`` (core/collect.py): an answer left
unread in the queue of a requester that stopped is dead-lettered (reason ``expired``) less
than ``2 * reply_ttl_seconds`` after it was sent, while a live requester's answers and an
answer still in time are left alone. memory and sqlite run on a ManualClock (the bound is
checked exactly); nats on the real clock with a 1 s TTL.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.brokers.base import Broker
from AgentOperatingSystem.messaging.brokers.memory import MemoryBroker
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import SYSTEM_CLOCK, Clock, ManualClock
from AgentOperatingSystem.messaging.errors import ConfigurationError, RequestTimeoutError
from AgentOperatingSystem.messaging.metadata import DLQ_REASON
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.support.engines import engine_params, engine_url
from tests.support.waiting import eventually


@dataclass
class Net:
    """Buses sharing one engine, and the engine's time."""

    engine: str
    url: str
    clock: Clock
    ttl: int
    shared: Broker | None = None  # memory: one engine for every bus of the test
    buses: list[MessageBus] = field(default_factory=list)

    @property
    def manual(self) -> bool:
        return isinstance(self.clock, ManualClock)

    async def bus(self, **overrides: Any) -> MessageBus:
        settings: dict[str, Any] = {
            "broker_url": self.url,
            "reply_ttl_seconds": self.ttl,
            "lock_seconds": 1000.0 if self.manual else 5.0,
            "shutdown_timeout": 5.0,
        }
        settings.update(overrides)
        bus = MessageBus(MessageBusConfig(**settings), clock=self.clock, broker=self.shared)
        await bus.start()
        self.buses.append(bus)
        return bus

    async def sweeps(self, bus: MessageBus, n: int = 1) -> None:
        """Let ``bus``'s collector sweep ``n`` more times (a period each)."""
        collector = bus._collector
        for _ in range(n):
            done = collector.sweeps
            if isinstance(self.clock, ManualClock):
                for _ in range(5):  # a collector just started gets to its sleep first
                    await asyncio.sleep(0)
                self.clock.advance(self.ttl)
            await eventually(lambda: collector.sweeps > done, 3 * self.ttl + 5, "a sweep")


@pytest.fixture(params=engine_params())
async def net(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Net]:
    engine: str = request.param
    clock: Clock = SYSTEM_CLOCK if engine == "nats" else ManualClock()
    async with engine_url(request, engine, tmp_path, name="collect") as url:
        shared = MemoryBroker(clock) if engine == "memory" else None
        n = Net(engine, url, clock, 1 if engine == "nats" else 60, shared)
        try:
            yield n
        finally:
            for bus in n.buses:
                await bus.stop()
            if shared is not None:
                await shared.close()


def _query(reply_to: str) -> Message:
    return Message(
        message_type=MessageType.QUERY,
        sender_id="client",
        recipient_id="svc",
        content={},
        reply_to=reply_to,
    )


async def test_an_answer_left_for_a_stopped_requester_is_dead_lettered_within_the_bound(
    net: Net,
) -> None:
    responder = await net.bus()
    requester = await net.bus()
    go = asyncio.Event()

    async def slow(msg: Message) -> dict[str, Any]:
        await go.wait()
        return {"answer": 42}

    await responder.subscribe("svc", handler=slow)
    with pytest.raises(RequestTimeoutError):
        await requester.request("client", "svc", {}, timeout=0.2)
    gone = requester.reply_queue
    await requester.stop()
    go.set()  # the answer comes after its requester is gone
    broker = responder.broker
    await eventually(lambda: _depth_is(broker, gone, 1), 10, "the late answer stored")
    sent, sent_real = net.clock.now(), time.monotonic()
    assert gone in await broker.queues()

    # first sweep: the queue is seen holding the answer; nothing is taken yet
    await net.sweeps(responder)
    if net.manual:
        assert await broker.depth(gone) == 1
    # a whole period later it still holds it: nobody reads it; the answer has expired
    if net.manual:
        await net.sweeps(responder)
    await eventually(lambda: _depth_is(broker, gone, 0), 3 * net.ttl + 5, "the answer collected")
    letters = await responder.get_dead_letter_messages(gone)
    assert [m.content for m in letters] == [{"answer": 42}]
    assert letters[0].metadata[DLQ_REASON] == "expired"
    assert letters[0].ttl == net.ttl  # the answer carried the reply TTL
    if net.manual:
        assert net.clock.now() - sent <= 2 * net.ttl
    else:
        assert time.monotonic() - sent_real < 2 * net.ttl + 1.5
    assert responder._collector.collected == 1


async def test_a_live_requester_gets_its_answer_after_sweeps_and_its_queue_is_untouched(
    net: Net,
) -> None:
    responder = await net.bus()
    requester = await net.bus()
    go = asyncio.Event()
    started = asyncio.Event()

    async def slow(msg: Message) -> dict[str, Any]:
        started.set()
        await go.wait()
        return {"answer": "in time"}

    await responder.subscribe("svc", handler=slow)
    call = asyncio.create_task(requester.request("client", "svc", {}, timeout=60))
    await asyncio.wait_for(started.wait(), 10)
    await net.sweeps(responder, 2)  # the request waits across two sweeps of each bus
    go.set()
    response = await asyncio.wait_for(call, 30)
    assert response.content == {"answer": "in time"}
    await net.sweeps(responder, 2)
    broker = responder.broker
    assert await broker.depth(requester.reply_queue) == 0
    assert await broker.dead_letter_depth(requester.reply_queue) == 0
    assert responder._collector.collected == requester._collector.collected == 0


async def test_an_answer_in_time_is_released_and_the_own_reply_queue_never_touched(
    net: Net,
) -> None:
    bus = await net.bus()
    slow_reader = "_reply.slowreader"  # another bus's queue that nobody read for a while
    await bus.reply(_query(slow_reader), {"n": 1})  # default TTL: expires after the bound
    in_time = Message(
        message_type=MessageType.RESPONSE,
        sender_id="svc",
        recipient_id=slow_reader,
        content={"n": 2},
        ttl=100 * net.ttl,  # its own, longer TTL: still in time at every sweep below
    )
    await bus.publish(in_time)
    await bus.reply(_query(bus.reply_queue), {"n": "own"})  # its listener never started
    broker = bus.broker
    assert await broker.depth(slow_reader) == 2

    if net.manual:
        await net.sweeps(bus, 2)
    else:
        await eventually(
            lambda: _dead_letter_depth_is(broker, slow_reader, 1),
            3 * net.ttl + 5,
            "the expired answer collected",
            interval=0.05,
        )

    letters = await bus.get_dead_letter_messages(slow_reader)
    assert [(m.content, m.metadata[DLQ_REASON]) for m in letters] == [({"n": 1}, "expired")]
    assert await broker.depth(slow_reader) == 1  # released at once, not taken
    await net.sweeps(bus, 2)
    assert await broker.depth(slow_reader) == 1
    assert await broker.dead_letter_depth(slow_reader) == 1
    [kept] = await bus.get_messages(slow_reader)
    assert kept.content == {"n": 2}
    await bus.acknowledge(kept.message_id, slow_reader)
    # the bus's own reply queue: never looked into, though its answer expired long ago
    assert await broker.depth(bus.reply_queue) == 1
    assert await broker.dead_letter_depth(bus.reply_queue) == 0


async def test_the_collector_stops_with_the_bus(each_engine_url: str) -> None:
    bus = MessageBus(MessageBusConfig(broker_url=each_engine_url, reply_ttl_seconds=1))
    await bus.start()
    task = bus._collector.task
    assert task is not None and not task.done()
    await bus.stop()
    assert task.done() and bus._collector.task is None


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "60"])
def test_reply_ttl_seconds_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        MessageBusConfig(reply_ttl_seconds=bad)
    assert MessageBusConfig().reply_ttl_seconds == 300


async def _depth_is(broker: Broker, queue: str, n: int) -> bool:
    return await broker.depth(queue) == n


async def _dead_letter_depth_is(broker: Broker, queue: str, n: int) -> bool:
    return await broker.dead_letter_depth(queue) == n


def _event(name: str) -> Message:
    return Message(
        message_type=MessageType.EVENT, sender_id="src", recipient_id=None, content={"event": name}
    )


async def _bound(broker: Broker, queue: str) -> bool:
    return queue in await broker.bindings(MessageType.EVENT.value)


async def test_the_streams_of_a_bus_that_is_gone_are_removed_within_the_bound(net: Net) -> None:
    live = await net.bus()
    ghost = await net.bus()
    stream = await ghost.stream_events(["x"]).__aenter__()
    broker = live.broker
    alive = ghost._collector.alive_queue
    assert stream.queue.startswith(f"_stream.{ghost.instance_id}.")
    assert await _bound(broker, stream.queue)
    await ghost._collector.stop()  # the ghost dies: no heartbeat from now on
    opened = net.clock.now()
    await live.publish(_event("x"))
    await eventually(lambda: _depth_is(broker, stream.queue, 1), 10, "the event in the stream")

    if net.manual:
        await net.sweeps(live, 2)  # its last heartbeat is not due yet: nothing removed
        assert await _bound(broker, stream.queue)
        await net.sweeps(live, 2)
    collector = live._collector
    await eventually(lambda: collector.streams_removed == 1, 5 * net.ttl + 5, "the stream removed")
    assert not await _bound(broker, stream.queue)
    assert await broker.depth(stream.queue) == 0
    assert stream.queue not in await broker.queues()
    assert alive not in await broker.queues()
    if net.manual:
        assert net.clock.now() - opened <= 4 * net.ttl
    await live.publish(_event("x"))  # a later event no longer piles up there
    assert await broker.depth(stream.queue) == 0
    await stream.aclose()


async def test_a_live_stream_that_is_not_read_for_a_while_is_left_alone(net: Net) -> None:
    other = await net.bus()
    reader = await net.bus()
    async with reader.stream_events(["x"]) as stream:
        await other.publish(_event("x"))
        await net.sweeps(other, 5)  # longer than the heartbeat's delay
        assert await _bound(other.broker, stream.queue)
        got = await asyncio.wait_for(stream.__anext__(), 10)
        assert got.content == {"event": "x"}
        await other.publish(_event("x"))
        got = await asyncio.wait_for(stream.__anext__(), 10)
        assert got.content == {"event": "x"}
    assert other._collector.streams_removed == 0
    # the last stream closed: its heartbeat is gone too
    assert reader._collector.alive_queue not in await other.broker.queues()
