"""The memory engine's wake-ups: an idle waiter costs a parked future and no timer; due times
of every queue share the engine's one timer task (:class:`Wakeups`), re-armed when an earlier
one comes."""

from __future__ import annotations

import asyncio

import pytest

from AgentOperatingSystem.messaging.brokers.base import Envelope
from AgentOperatingSystem.messaging.brokers.memory import MemoryBroker
from AgentOperatingSystem.messaging.brokers.wakeups import Wakeups
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.types import Message, MessageType

pytestmark = pytest.mark.timeout(30)


def _env(queue: str, *, available_at: float = 0.0) -> Envelope:
    m = Message(message_type=MessageType.TASK, sender_id="t", recipient_id=queue, content={})
    return Envelope(queue, m.message_id, m.priority.value, message=m, available_at=available_at)


async def _turns(n: int = 10) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timer handles scheduled on the loop (CPython's base loop keeps them in ``_scheduled``)."""
    return len(loop._scheduled)  # type: ignore[attr-defined]


async def test_a_thousand_idle_waiters_set_no_timer() -> None:
    broker = MemoryBroker(ManualClock())
    loop = asyncio.get_running_loop()
    before = _timers(loop)
    waiters = {f"a{i}": asyncio.create_task(broker.wait(f"a{i}", None)) for i in range(1000)}
    await _turns()
    assert _timers(loop) == before  # no call_later per waiter
    assert broker.wakeups.timer_tasks == 0
    assert not any(w.done() for w in waiters.values())
    await broker.send([_env("a7")])
    await _turns()
    assert [q for q, w in waiters.items() if w.done()] == ["a7"]
    await broker.close()
    await asyncio.wait_for(asyncio.gather(*waiters.values()), 5)


async def test_due_times_of_many_queues_share_one_timer_task() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock)
    now = clock.now()
    queues = [f"a{i}" for i in range(200)]
    for i, q in enumerate(queues):  # a{i} becomes available after i + 1 seconds
        await broker.send([_env(q, available_at=now + i + 1)])
    waiters = {q: asyncio.create_task(broker.wait(q, None)) for q in queues}
    await _turns()
    assert broker.wakeups.timer_tasks == 1
    assert broker.wakeups.pending_due == 200
    assert not any(w.done() for w in waiters.values())
    for i in range(3):
        clock.advance(1.0)
        await _turns()
        assert [q for q, w in waiters.items() if w.done()] == queues[: i + 1]
    clock.advance(200)
    await _turns(30)
    assert all(w.done() for w in waiters.values())
    for q in queues:
        assert len(await broker.receive(q, 5, 30)) == 1
    assert broker.wakeups.timer_tasks == 0  # nothing due: the task ended
    await broker.close()


async def test_a_release_backoff_wakes_a_waiter_at_its_due_time() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock)
    await broker.send([_env("ceo")])
    (d,) = await broker.receive("ceo", 1, 30)
    waiter = asyncio.create_task(broker.wait("ceo", None))
    await _turns()
    assert not waiter.done()  # the lock is 30 s away
    await broker.release("ceo", d, delay=5.0)
    await _turns()
    assert not waiter.done()
    clock.advance(4.9)
    await _turns()
    assert not waiter.done()
    clock.advance(0.2)
    await _turns()
    assert waiter.done()
    assert len(await broker.receive("ceo", 1, 30)) == 1
    await broker.close()


async def test_a_lock_expiring_wakes_a_waiter_and_a_settled_one_does_not() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock)
    await broker.send([_env("ceo"), _env("cfo")])
    (held,) = await broker.receive("ceo", 1, 10)
    (done,) = await broker.receive("cfo", 1, 10)
    assert await broker.ack("cfo", [done]) == [True]
    ceo = asyncio.create_task(broker.wait("ceo", None))
    cfo = asyncio.create_task(broker.wait("cfo", None))
    await _turns()
    assert broker.wakeups.pending_due == 1  # only the lock still held has a due time
    clock.advance(10.1)
    await _turns()
    assert ceo.done() and not cfo.done()
    (again,) = await broker.receive("ceo", 1, 10)
    assert again.message_id == held.message_id
    await broker.close()
    await asyncio.wait_for(cfo, 5)


async def test_an_earlier_due_time_rearms_the_one_timer() -> None:
    clock = ManualClock()
    wakeups = Wakeups(clock)
    late = asyncio.create_task(wakeups.wait("late", None))
    early = asyncio.create_task(wakeups.wait("early", None))
    await _turns()
    wakeups.at("late", clock.now() + 10)
    wakeups.at("late", clock.now() + 20)  # later than the one set: not kept
    wakeups.at("early", clock.now() + 1)
    assert wakeups.pending_due == 2
    await _turns()
    assert wakeups.timer_tasks == 1  # the re-armed task replaced the first one
    clock.advance(1)
    await _turns()
    assert early.done() and not late.done()
    clock.advance(9)
    await _turns()
    assert late.done()
    await wakeups.close()
    assert wakeups.timer_tasks == 0


async def test_close_stops_the_timer_and_wakes_waiters() -> None:
    clock = ManualClock()
    broker = MemoryBroker(clock)
    await broker.send([_env("ceo", available_at=clock.now() + 60)])
    waiter = asyncio.create_task(broker.wait("ceo", None))
    await _turns()
    assert broker.wakeups.timer_tasks == 1
    await broker.close()
    await asyncio.wait_for(waiter, 5)
    assert broker.wakeups.timer_tasks == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "aos-memory-timer"]
