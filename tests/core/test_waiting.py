"""How the core waits on its engine: ``subscribe()`` and the reply listener prepare their
queue before they return, a consumer with nothing to do waits with ``wait(queue, None)`` (no
poll of its own), and a pull with a timeout passes the time it has left."""

from __future__ import annotations

import asyncio

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.brokers.memory import MemoryBroker
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.types import MessageType
from tests.support.messages import task

pytestmark = pytest.mark.timeout(30)


class Recording(MemoryBroker):
    """The memory engine, noting each ``prepare`` and each ``wait`` timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[str] = []
        self.timeouts: list[tuple[str, float | None]] = []

    async def prepare(self, queue: str) -> None:
        self.prepared.append(queue)
        await super().prepare(queue)

    async def wait(self, queue: str, timeout: float | None) -> None:
        self.timeouts.append((queue, timeout))
        await super().wait(queue, timeout)


async def _bus(broker: Recording) -> MessageBus:
    return await MessageBus(MessageBusConfig(broker_url="memory://"), broker=broker).start()


async def test_subscribe_prepares_the_queue_before_it_returns() -> None:
    broker = Recording()
    bus = await _bus(broker)
    try:
        await bus.subscribe("ceo", [MessageType.TASK], lambda m: None)
        assert broker.prepared == ["ceo"]
    finally:
        await bus.stop()


async def test_an_idle_consumer_waits_without_a_timeout() -> None:
    broker = Recording()
    bus = await _bus(broker)
    seen: list[int] = []
    try:
        await bus.subscribe("ceo", [MessageType.TASK], lambda m: seen.append(m.content["n"]))
        for n in range(3):
            await bus.publish(task("ceo", n))
            for _ in range(20):
                await asyncio.sleep(0)
        await asyncio.sleep(0.3)  # longer than poll_interval (0.2 s): no wake-up meanwhile
        assert seen == [0, 1, 2]
        waits = [t for q, t in broker.timeouts if q == "ceo"]
        assert waits and all(t is None for t in waits)
        assert len(waits) <= 4  # one per message and the first: none from a poll
    finally:
        await bus.stop()


async def test_the_reply_listener_is_prepared_before_the_request_goes_out() -> None:
    broker = Recording()
    bus = await _bus(broker)
    try:
        await bus.subscribe("cfo", [MessageType.QUERY], lambda m: {"ok": True})
        reply = await bus.request("ceo", "cfo", {"q": 1}, timeout=5)
        assert reply.content == {"ok": True}
        assert bus.reply_queue in broker.prepared
    finally:
        await bus.stop()


async def test_a_pull_with_a_timeout_passes_the_time_it_has_left() -> None:
    broker = Recording()
    bus = await _bus(broker)
    try:
        assert await bus.receive("ceo", timeout=0.1) is None
        waits = [t for q, t in broker.timeouts if q == "ceo"]
        assert waits and all(t is not None and 0 < t <= 0.1 for t in waits)
    finally:
        await bus.stop()


async def test_a_pull_without_a_timeout_waits_for_the_next_message() -> None:
    broker = Recording()
    bus = await _bus(broker)
    try:
        pulling = asyncio.create_task(bus.receive("ceo", timeout=None))
        await asyncio.sleep(0.3)
        assert not pulling.done()
        assert [t for q, t in broker.timeouts if q == "ceo"] == [None]  # no poll
        await bus.publish(task("ceo", 1))
        got = await asyncio.wait_for(pulling, 5)
        assert got is not None and got.content == {"n": 1}
    finally:
        await bus.stop()


async def test_an_event_stream_prepares_its_queue() -> None:
    broker = Recording()
    bus = await _bus(broker)
    try:
        async with bus.stream_events() as stream:
            assert stream.queue in broker.prepared
    finally:
        await bus.stop()


class SlowReceive(MemoryBroker):
    """The memory engine whose receive is held until ``release`` is set (an engine round trip
    in progress), noting when one is under way."""

    def __init__(self) -> None:
        super().__init__()
        self.receiving = asyncio.Event()
        self.release = asyncio.Event()

    async def receive(self, queue: str, max_messages: int, lock_seconds: float) -> list:  # type: ignore[type-arg]
        self.receiving.set()
        await self.release.wait()
        return await super().receive(queue, max_messages, lock_seconds)


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_a_consumer_closed_during_a_receive_ends_instead_of_waiting(
    concurrency: int,
) -> None:
    """Closing a loop that is inside a receive cannot cancel it; the loop must see the close
    when the receive comes back empty, not wait on the engine (nothing would wake it)."""
    broker = SlowReceive()
    bus = await MessageBus(MessageBusConfig(broker_url="memory://"), broker=broker).start()
    try:
        await bus.subscribe("ceo", None, lambda m: None, max_concurrency=concurrency)
        await asyncio.wait_for(broker.receiving.wait(), 5)
        stopping = asyncio.create_task(bus.unsubscribe("ceo", unbind=False))
        for _ in range(10):
            await asyncio.sleep(0)
        broker.release.set()  # the receive returns [] after the close
        await asyncio.wait_for(stopping, 5)
    finally:
        await asyncio.wait_for(bus.stop(), 5)
