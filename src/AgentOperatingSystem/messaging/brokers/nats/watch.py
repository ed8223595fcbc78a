"""Waking ``wait``: publish notices from every process, and local releases and deadlines.

After every publish or immediate release, core subject ``<ns>.n.<token>`` carries a one-byte
"priority p has news" notice, so ``wait`` in any process wakes at once (the connection does
not echo its own notices: this process wakes its waiters directly). A delayed release or a
lock deadline of this process wakes ``wait`` when it comes due.

Each watched queue also records what the handoff window reads (:mod:`.handoff`): whether
its consumer is waiting, when it last received or waited (on the engine clock), and whether
its last receive found the queue drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from nats.aio.msg import Msg

from ...clock import Clock
from .connection import Connection
from .headers import DIGITS
from .locks import Locks
from .pullers import Puller

__all__ = ["Watch", "Watches"]


@dataclass(slots=True)
class Watch:
    """Core subscriptions of a queue: publish notices that wake ``wait``, and handoffs."""

    event: asyncio.Event
    sub: Any
    wake_at: float = float("inf")  # time.monotonic() of the next local wake-up
    handoff_sub: Any = None
    waiters: int = 0  # waits in progress on this queue
    active_at: float = 0.0  # clock.monotonic() of the last receive or wait on this queue
    drained: bool = False  # the last receive found nothing more in the queue


class Watches:
    """The watched queues of this engine (a queue is watched from its first receive or wait)."""

    def __init__(
        self, conn: Connection, clock: Clock, pullers: dict[str, list[Puller]], locks: Locks
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._pullers = pullers
        self._locks = locks
        self.by_queue: dict[str, Watch] = {}
        #: called with (queue, message) for every handoff offered to this process's
        #: consumer of a watched queue; the facade points it at the handoffs (default:
        #: decline every offer)
        self.on_handoff: Callable[[str, Msg], Awaitable[None]] = self._decline

    async def _decline(self, queue: str, msg: Msg) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await self._conn.nc.publish(msg.reply, b"0")

    async def watch(self, queue: str) -> Watch:
        """``queue``'s watch, subscribing to its notices and handoffs on first use."""
        watch = self.by_queue.get(queue)
        if watch is not None:
            return watch
        event = asyncio.Event()
        pullers_of = self._pullers

        async def on_publish(msg: Msg) -> None:
            data = msg.data
            watch = self.by_queue.get(queue)
            if watch is not None:
                watch.drained = False  # queued messages first: no handoff overtakes them
            pullers = pullers_of.get(queue)
            if pullers is not None:
                if len(data) == 1 and 48 <= data[0] <= 52:
                    pullers[data[0] - 48].may_have()
                else:
                    for puller in pullers:
                        puller.may_have()
            event.set()

        conn, names = self._conn, self._conn.subjects
        with conn.errors("watch"):
            sub = await conn.nc.subscribe(names.notice(queue), cb=on_publish)
            handoff_sub = await conn.nc.subscribe(
                names.handoff(queue),
                queue=names.handoff_group,
                cb=functools.partial(self.on_handoff, queue),
            )
        watch = self.by_queue.get(queue)
        if watch is not None:  # a concurrent wait won the race
            for extra in (sub, handoff_sub):
                with contextlib.suppress(Exception):
                    await extra.unsubscribe()
            return watch
        watch = self.by_queue[queue] = Watch(event=event, sub=sub, handoff_sub=handoff_sub)
        return watch

    def schedule_wake(self, queue: str, delay: float, priority: int | None = None) -> None:
        """Messages of ``queue`` (one priority or any) may be available in ``delay`` s."""
        pullers = self._pullers.get(queue)
        if pullers is not None:
            at = time.monotonic() + delay if delay > 0 else 0.0
            if priority is None:
                for puller in pullers:
                    puller.may_have(at)
            else:
                pullers[priority].may_have(at)
        watch = self.by_queue.get(queue)
        if watch is None:
            return
        if delay <= 0:
            watch.drained = False
            watch.event.set()
        else:
            watch.wake_at = min(watch.wake_at, time.monotonic() + delay)

    async def notify(self, queue: str, priority: int) -> None:
        """Wake waiters on ``queue``: in this process directly, elsewhere by a tiny core
        message naming the priority (the connection does not echo it back to us)."""
        self.schedule_wake(queue, 0.0, priority)
        with contextlib.suppress(Exception):
            await self._conn.nc.publish(self._conn.subjects.notice(queue), DIGITS[priority])

    async def wait(self, queue: str, timeout: float) -> None:
        """Return when something was published to ``queue`` (any process), a local release or
        lock deadline comes due, or after ``timeout`` seconds of real time."""
        self._conn.check_open()
        watch = await self.watch(queue)
        if watch.event.is_set():
            watch.event.clear()
            watch.active_at = self._clock.monotonic()
            return
        now = time.monotonic()
        wake = self._locks.next_deadline(queue, watch.wake_at)
        limit = max(0.0, timeout)
        if wake != float("inf"):
            limit = min(limit, max(0.0, wake - now))
        watch.waiters += 1
        try:
            async with asyncio.timeout(limit):  # no extra task, unlike wait_for
                await watch.event.wait()
        except TimeoutError:
            pass
        finally:
            watch.waiters -= 1
            watch.active_at = self._clock.monotonic()
        if time.monotonic() >= watch.wake_at:
            watch.wake_at = float("inf")
        watch.event.clear()

    def wake_all(self) -> None:
        """Wake every waiter (a reconnect, or close)."""
        for watch in self.by_queue.values():
            watch.event.set()

    def close(self) -> None:
        """Wake every waiter and forget the watches."""
        self.wake_all()
        self.by_queue.clear()
