"""The NATS consumer layout and the event-driven ``wait`` (issue 18): consumers only for the
priorities a queue holds, ``prepare`` making a queue ready, ``wait(queue, None)`` woken by
notices, by the engine's one timer and by its one safety poll, and an idle cost that does
not grow with the number of queues."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from AgentOperatingSystem.messaging.brokers.base import Envelope, Settlement
from AgentOperatingSystem.messaging.brokers.nats import NatsBroker, create_nats_broker
from AgentOperatingSystem.messaging.brokers.nats import watch as watch_module
from AgentOperatingSystem.messaging.clock import SystemClock
from AgentOperatingSystem.messaging.errors import QueueFullError
from tests.support.nats_fixtures import new_nats_namespace
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.nats

OpenBroker = Callable[[], Awaitable[NatsBroker]]


def env(queue: str, mid: str, priority: int = 2) -> Envelope:
    return Envelope(queue=queue, message_id=mid, priority=priority, body=mid.encode())


@pytest_asyncio.fixture
async def open_broker(nats_url: str, nats_namespace: str) -> AsyncIterator[OpenBroker]:
    """Brokers in this test's namespace on the session server (each one a "process")."""
    opened: list[NatsBroker] = []

    async def factory() -> NatsBroker:
        broker = await create_nats_broker(nats_url, clock=SystemClock(), namespace=nats_namespace)
        opened.append(broker)
        return broker

    yield factory
    for broker in opened:
        await broker.close()


async def consumers(broker: NatsBroker) -> int:
    """Consumers on the server of the broker's queue stream (every process's)."""
    info = await broker._conn.js.stream_info(broker._conn.subjects.q_stream)
    return int(info.state.consumer_count)


async def test_prepare_makes_no_consumer_for_an_empty_queue_and_one_per_priority_used(
    open_broker: OpenBroker,
) -> None:
    broker = await open_broker()
    for i in range(20):
        await broker.prepare(f"agent{i}")
    assert await consumers(broker) == 0  # idle agents cost no consumer
    await broker.send([env("agent0", "a"), env("agent1", "b"), env("agent1", "c", priority=0)])
    for q in ("agent0", "agent1"):
        got = await broker.receive(q, 10, 30)
        assert await broker.ack(q, [Settlement(d.message_id, d.token) for d in got])
    assert await consumers(broker) == 3  # agent0: priority 2; agent1: priorities 0 and 2


async def test_prepare_finds_the_priorities_another_process_stored(
    open_broker: OpenBroker,
) -> None:
    a, b = await open_broker(), await open_broker()
    await a.send([env("ceo", "low", 4), env("ceo", "crit", 0), env("ceo", "norm", 2)])
    await b.prepare("ceo")  # b learns from the stream which priorities hold messages
    got = await b.receive("ceo", 10, 30)
    assert [d.message_id for d in got] == ["crit", "norm", "low"]


async def test_a_notice_of_a_new_priority_wakes_a_waiter_without_timeout(
    open_broker: OpenBroker,
) -> None:
    a, b = await open_broker(), await open_broker()
    await b.prepare("cfo")
    await a.send([env("cfo", "n1")])
    await asyncio.wait_for(b.wait("cfo", None), 5)
    [first] = await b.receive("cfo", 10, 30)
    assert first.message_id == "n1"
    waiter = asyncio.create_task(b.wait("cfo", None))
    await asyncio.sleep(0.1)
    assert not waiter.done()  # no timer of its own: it waits for the engine
    await a.send([env("cfo", "urgent", priority=0)])  # a priority b has no consumer for
    await asyncio.wait_for(waiter, 5)
    assert [d.message_id for d in await b.receive("cfo", 10, 30)] == ["urgent"]


async def test_a_delayed_release_wakes_a_waiter_from_the_engine_timer(
    open_broker: OpenBroker,
) -> None:
    broker = await open_broker()
    q = "retry"
    await broker.send([env(q, "m")])
    [d] = await broker.receive(q, 1, 30)
    assert await broker.release(q, Settlement(d.message_id, d.token), delay=0.4)
    started = time.monotonic()
    for i in range(50):  # idle waiters elsewhere set no timer
        await broker.prepare(f"idle{i}")
    idle = [asyncio.create_task(broker.wait(f"idle{i}", None)) for i in range(50)]
    await asyncio.wait_for(broker.wait(q, None), 5)
    assert 0.35 <= time.monotonic() - started < 3
    assert len(broker._watches.timers) == 0  # the one due time was taken
    [again] = await broker.receive(q, 1, 30)
    assert again.message_id == "m" and again.attempts == 2
    assert not any(t.done() for t in idle)
    for t in idle:
        t.cancel()
    await asyncio.gather(*idle, return_exceptions=True)


async def test_the_safety_poll_finds_a_lock_another_process_let_run_out(
    open_broker: OpenBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_module, "SAFETY_POLL_SECONDS", 0.2)
    a, b = await open_broker(), await open_broker()
    q = "locks"
    await a.send([env(q, "m")])
    [_held] = await a.receive(q, 1, 0.5)  # a holds it; its lock runs out on the server
    assert await b.receive(q, 1, 0.5) == []
    # b's wait has no timeout, and a sends no notice when its lock runs out: the engine's
    # safety poll wakes b
    await asyncio.wait_for(b.wait(q, None), 5)
    got: list[object] = []
    for _ in range(50):
        got = list(await b.receive(q, 1, 0.5))
        if got:
            break
        await asyncio.wait_for(b.wait(q, None), 5)
    assert [g.message_id for g in got] == ["m"]  # type: ignore[attr-defined]
    assert b._watches.polls >= 1


async def test_a_thousand_idle_waiters_cost_the_server_nothing_but_the_safety_poll(
    nats_private_server: NatsServer,
) -> None:
    broker = await create_nats_broker(
        nats_private_server.url, clock=SystemClock(), namespace=new_nats_namespace()
    )
    try:
        queues = [f"agent{i}" for i in range(1000)]
        started = time.monotonic()
        for q in queues:
            await broker.prepare(q)
        prepared_in = time.monotonic() - started
        waiters = [asyncio.create_task(broker.wait(q, None)) for q in queues]
        await asyncio.sleep(0.3)
        before = nats_private_server.monitor("/varz")
        t0 = time.monotonic()
        await asyncio.sleep(2.5)
        after = nats_private_server.monitor("/varz")
        per_s = (after["in_msgs"] - before["in_msgs"]) / (time.monotonic() - t0)
        assert per_s < 3  # one safety poll every 2 s (and a ping), not 1,000 pulls
        assert not any(w.done() for w in waiters)
        assert len(broker._watches.timers) == 0
        assert prepared_in < 10  # one round trip each (generous: the machine is shared)
        assert (await consumers(broker)) == 0
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    finally:
        await broker.close()


async def test_the_max_depth_check_of_many_queues_shares_one_snapshot(
    open_broker: OpenBroker,
) -> None:
    broker = await open_broker()
    for i in range(200):
        await broker.send([env(f"agent{i}", "m")], max_depth=100)
    # one snapshot of the stream every DEPTH_CACHE_SECONDS, not a STREAM.INFO per queue
    assert broker._depths.snapshots <= 5
    # near the limit the queue is measured, and a full queue is still refused
    await broker.send([env("tiny", "a"), env("tiny", "b")], max_depth=2)
    with pytest.raises(QueueFullError):
        await broker.send([env("tiny", "c")], max_depth=2)
    assert await broker.depth("tiny") == 2


async def test_after_a_reconnect_one_poll_finds_what_came_without_a_notice(
    open_broker: OpenBroker,
) -> None:
    broker = await open_broker()
    for i in range(100):
        await broker.prepare(f"agent{i}")
    waiter = asyncio.create_task(broker.wait("agent7", None))
    await asyncio.sleep(0.05)
    # stored with no notice (as if the notice was lost while the client was reconnecting)
    subject = broker._conn.subjects.queue("agent7", 1)
    await broker._conn.js.publish(subject, b"x", headers={"Aos": "1 0 - - lost"})
    await asyncio.sleep(0.1)
    assert not waiter.done()
    polls = broker._watches.polls
    broker._watches.reconnected()  # what the reconnect hook does
    await asyncio.wait_for(waiter, 5)
    await asyncio.sleep(0.05)
    assert broker._watches.polls == polls + 1  # one request for every watched queue
    got = await broker.receive("agent7", 10, 30)
    assert [d.message_id for d in got] == ["lost"] and got[0].priority == 1
