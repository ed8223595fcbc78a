"""start/stop on every engine: graceful shutdown, nothing left running, nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from AgentOperatingSystem.messaging.errors import BrokerClosedError
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.support.messages import task

from .conftest import Harness

pytestmark = pytest.mark.timeout(90)


async def test_no_task_outlives_stop(harness: Harness) -> None:
    before = asyncio.all_tasks()
    bus = await harness.bus()

    async def handler(msg: Message) -> dict[str, Any]:
        return {"ok": msg.content["n"]}

    await bus.subscribe("worker", [MessageType.TASK, MessageType.QUERY], handler)
    await bus.subscribe("events", [MessageType.EVENT], handler, max_concurrency=4)
    await bus.publish(task("worker", 1))
    await bus.request(recipient_id="worker", content={"n": 2}, timeout=10)
    stream = bus.stream_events(["x"])
    reader = asyncio.create_task(anext(stream))
    await asyncio.wait_for(stream.ready.wait(), 10)
    await bus.stop()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, 10)
    left = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not [t for t in left if not t.done()], left


async def test_stop_lets_a_running_handler_finish_and_acks_it(harness: Harness) -> None:
    bus = await harness.bus(shutdown_timeout=10)
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[int] = []
    order: list[str] = []
    engine = bus.broker
    close_engine = engine.close
    engine_closing = asyncio.Event()

    async def closing() -> None:  # the bus closes its engine last, after its handlers
        order.append("engine closed")
        engine_closing.set()
        await close_engine()

    engine.close = closing  # type: ignore[method-assign]

    async def handler(msg: Message) -> None:
        started.set()
        await release.wait()
        finished.append(msg.content["n"])
        order.append("handler finished")

    async def stop() -> None:
        await bus.stop()
        order.append("stop returned")

    await bus.subscribe("worker", [MessageType.TASK], handler)
    await bus.publish(task("worker", 1))
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.create_task(stop())
    await harness.eventually(lambda: not bus.started)  # stop has begun: no more publishes
    # A stop that did not wait would now go on to close the engine and return; give it
    # ample time to (it needs a few loop turns), watching for either.
    closed = asyncio.create_task(engine_closing.wait())
    early, _ = await asyncio.wait(
        {stopping, closed}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED
    )
    assert not early and order == []  # waits for the handler
    release.set()
    await asyncio.wait_for(stopping, 10)
    await closed
    assert finished == [1]
    assert order == ["handler finished", "engine closed", "stop returned"]
    if harness.engine != "memory":  # a new bus on the same store: the message was acked
        again = await harness.bus()
        assert await again.queue_depth("worker") == 0


async def test_stop_deadline_cancels_a_stuck_handler_and_loses_nothing(harness: Harness) -> None:
    bus = await harness.bus(shutdown_timeout=0.2, lock_seconds=1.0)
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def handler(msg: Message) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    await bus.subscribe("worker", [MessageType.TASK], handler)
    await bus.publish(task("worker", 7))
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(bus.stop(), 10)
    assert cancelled == [True]
    if harness.engine != "memory":
        again = await harness.bus(lock_seconds=1.0)
        await harness.advance(1.3)  # the cancelled delivery's lock runs out
        (back,) = await again.get_messages("worker")
        assert back.content == {"n": 7}


async def test_prefetched_messages_are_released_on_stop(harness: Harness) -> None:
    bus = await harness.bus(prefetch=10, lock_seconds=30.0)
    started, release = asyncio.Event(), asyncio.Event()
    seen: list[int] = []

    async def handler(msg: Message) -> None:
        seen.append(msg.content["n"])
        started.set()
        await release.wait()

    for i in range(5):
        await bus.publish(task("worker", i))
    await bus.subscribe("worker", [MessageType.TASK], handler)
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.create_task(bus.stop())
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert seen == [0]  # the other four were fetched but never started
    if harness.engine != "memory":
        again = await harness.bus(lock_seconds=30.0)
        # released at stop: available at once, not after the 30 s lock
        got = await again.get_messages("worker", limit=10)
        assert [m.content["n"] for m in got] == [1, 2, 3, 4]


async def test_a_stopped_bus_refuses_work_and_fails_waiting_requests(harness: Harness) -> None:
    bus = await harness.bus()
    waiting = asyncio.create_task(
        bus.request(recipient_id="nobody", content={"q": 1}, timeout=30)
    )
    await asyncio.sleep(0.05)
    await bus.stop()
    with pytest.raises(BrokerClosedError):
        await asyncio.wait_for(waiting, 10)
    with pytest.raises(BrokerClosedError):
        await bus.publish(task("worker", 1))
    with pytest.raises(BrokerClosedError):
        await bus.get_messages("worker")
    await bus.stop()  # stopping twice is fine
