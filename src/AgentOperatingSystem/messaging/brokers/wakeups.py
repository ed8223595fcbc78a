"""Wake-ups for :meth:`~.base.Broker.wait`: who waits on which queue, and one timer for the
whole engine.

An engine keeps one :class:`Wakeups`. A consumer with nothing to receive parks a future here
(:meth:`Wakeups.wait`; an engine may keep its own waiters and give ``on_due``
instead); the engine calls :meth:`Wakeups.notify` when a queue may have
something receivable (a send, a release, a notification from another process), and
:meth:`Wakeups.at` when it knows a time at which one will be (a delayed message or a release
backoff coming due, a lock expiring). Due times live in one heap per engine, served by one
task that sleeps on the engine's clock until the earliest of them and is re-armed only when an
earlier one is added: a thousand idle queues cost one sleeping task, not a thousand timers.

Used by the in-process engines (memory, sqlite); it imports nothing but the ground.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Callable

from ..clock import Clock

__all__ = ["Wakeups"]


class Wakeups:
    """Waiters by queue, plus the engine's one timer of due times (see the module docstring)."""

    def __init__(
        self,
        clock: Clock,
        name: str = "aos-wakeups",
        on_due: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._name = name
        #: what a due time does: wake the queue's waiters here, or the engine's own
        self._on_due = on_due or self.notify
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        #: (due time, seq, queue): when a queue should be woken; stale items are harmless
        self._heap: list[tuple[float, int, str]] = []
        #: the earliest due time in the heap for each queue (later ones are not pushed)
        self._due: dict[str, float] = {}
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        #: the due time the running task sleeps until
        self._armed = float("inf")
        self._retired: set[asyncio.Task[None]] = set()
        self._closed = False

    # ---------------------------------------------------------------- waiting

    def waiting(self, queue: str) -> bool:
        """True when something waits on ``queue``."""
        return bool(self._waiters.get(queue))

    @property
    def waiting_queues(self) -> list[str]:
        """The queues something waits on now."""
        return [q for q, w in self._waiters.items() if w]

    @property
    def timer_tasks(self) -> int:
        """Timer tasks alive (0 or 1, plus re-armed ones still finishing): for tests."""
        live = 1 if self._task is not None and not self._task.done() else 0
        return live + sum(1 for t in self._retired if not t.done())

    @property
    def pending_due(self) -> int:
        """Queues with a due time in the timer."""
        return len(self._due)

    async def wait(self, queue: str, timeout: float | None) -> None:
        """Park until :meth:`notify` of ``queue``, its due time, :meth:`close`, or ``timeout``
        seconds of real time (None: no timeout)."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters.get(queue)
        if waiters is None:
            waiters = self._waiters[queue] = set()
        waiters.add(fut)
        handle = loop.call_later(max(0.0, timeout), _wake, fut) if timeout is not None else None
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()
            waiters = self._waiters.get(queue)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._waiters[queue]

    def notify(self, queue: str) -> None:
        """Wake everything waiting on ``queue``."""
        waiters = self._waiters.pop(queue, None)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def notify_all(self) -> None:
        """Wake every waiter of every queue."""
        waiters, self._waiters = self._waiters, {}
        for futs in waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)

    # ---------------------------------------------------------------- the timer

    def at(self, queue: str, due: float) -> None:
        """Wake ``queue``'s waiters at ``due`` (epoch seconds on the engine's clock). A due
        time later than one already set for the queue is not kept: that earlier wake-up
        lets the consumer look again and set the next one."""
        if self._closed:
            return
        known = self._due.get(queue)
        if known is not None and known <= due:
            return
        self._due[queue] = due
        heapq.heappush(self._heap, (due, next(self._seq), queue))
        if due < self._armed:
            self._arm(due)

    def _arm(self, due: float) -> None:
        """(Re)start the one timer task for the earliest due time."""
        old = self._task
        if old is not None and not old.done():
            old.cancel()
            self._retired.add(old)
            old.add_done_callback(self._retired.discard)
        self._armed = due
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        heap = self._heap
        clock = self._clock
        while heap:
            due = heap[0][0]
            self._armed = due
            delay = due - clock.now()
            if delay > 0:
                await clock.sleep(delay)
                continue  # an earlier item may have been pushed meanwhile (then re-armed)
            now = clock.now()
            while heap and heap[0][0] <= now:
                when, _, queue = heapq.heappop(heap)
                if self._due.get(queue) == when:
                    del self._due[queue]
                    self._on_due(queue)
        self._armed = float("inf")

    async def close(self) -> None:
        """Wake every waiter and stop the timer (awaited)."""
        self._closed = True
        self.notify_all()
        self._heap.clear()
        self._due.clear()
        tasks = [t for t in (self._task, *self._retired) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
