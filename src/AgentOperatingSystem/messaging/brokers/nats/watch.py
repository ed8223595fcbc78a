"""Waking ``wait``: publish notices from every process, this engine's due times, and one slow
safety poll; and ``prepare``, which sets a queue up for consuming.

* After every publish or immediate release, core subject ``<ns>.n.<token>`` carries a
  one-byte "priority p has news" notice, so ``wait`` in any process wakes at once (the
  connection does not echo its own notices: this process wakes its waiters directly).
* A delayed release, a delayed message handed back, and the lock deadlines of a queue that
  is waited on come due at known times: they are kept in the engine's one timer
  (:mod:`.timers`), never one timer per queue.
* What another process does without a notice (a lock of its own running out on the server,
  a delayed release of its own coming due, a process that died holding locks) is found by
  one safety poll per engine every ``SAFETY_POLL_SECONDS``: one ``STREAM.INFO`` listing the
  subjects that hold messages, which wakes the waiting queues that hold more messages than
  this process has locked. Idle, with nothing stored, it is one small request per poll
  whatever the number of queues. After a reconnect (notices may have been lost) it runs at
  once over every watched queue.
* ``prepare(queue)`` subscribes to the queue's notices and handoffs, then asks the stream
  (one ``STREAM.INFO`` with the queue's subject filter) which priorities hold messages; the
  subscription goes out first on the same connection, so a message stored after that
  answer is announced by a notice. ``wait(queue, None)`` has no timer at all.

Each watched queue also records what the handoff window reads (:mod:`.handoff`): whether
its consumer is waiting, when it last received or waited (on the engine clock), and whether
its last receive found the queue drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from nats.aio.msg import Msg

from ...clock import Clock
from ...errors import BrokerUnavailableError
from .connection import Connection, RequestHandle
from .headers import DIGITS
from .locks import Locks
from .pullers import Pullers
from .subjects import queue_token
from .timers import DueTimes

__all__ = ["SAFETY_POLL_SECONDS", "SERVER_MARGIN", "Watch", "Watches"]

_log = logging.getLogger(__name__)

#: Seconds between two safety polls of the engine (see the module docs).
SAFETY_POLL_SECONDS = 2.0
#: Added to a due time the server keeps (a ``nak`` delay, measured from its arrival there),
#: so the wake-up does not come a moment before the message is back.
SERVER_MARGIN = 0.05
#: Timeout of one safety poll request (it is not retried: the next poll comes anyway).
_POLL_TIMEOUT = 2.0


@dataclass(slots=True)
class Watch:
    """Core subscriptions of a queue: publish notices that wake ``wait``, and handoffs."""

    event: asyncio.Event
    sub: Any
    handoff_sub: Any = None
    ready: bool = False  # prepared: the priorities holding messages were asked for
    waiters: int = 0  # waits in progress on this queue
    active_at: float = 0.0  # clock.monotonic() of the last receive or wait on this queue
    drained: bool = False  # the last receive found nothing more in the queue
    lock_due: float = float("inf")  # the lock deadline set in the timer for this queue
    asking: RequestHandle | None = None  # prepare's question to the stream, unanswered yet


class Watches:
    """The watched queues of this engine (a queue is watched once prepared)."""

    def __init__(self, conn: Connection, clock: Clock, pullers: Pullers, locks: Locks) -> None:
        self._conn = conn
        self._clock = clock
        self._pullers = pullers
        self._locks = locks
        self.by_queue: dict[str, Watch] = {}
        self.timers = DueTimes(self._due)
        self._poll_task: asyncio.Task[None] | None = None
        self._poll_now = asyncio.Event()  # poll at once (a reconnect)
        self._after_reconnect = False  # the next poll looks at every watched queue
        #: safety polls made (a figure for tests and benchmarks)
        self.polls = 0
        #: called with (queue, message) for every handoff offered to this process's
        #: consumer of a watched queue; the facade points it at the handoffs (default:
        #: decline every offer)
        self.on_handoff: Callable[[str, Msg], Awaitable[None]] = self._decline

    async def _decline(self, queue: str, msg: Msg) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await self._conn.nc.publish(msg.reply, b"0")

    # ------------------------------------------------------------------ preparing
    async def watch(self, queue: str) -> Watch:
        """``queue``'s watch, subscribing to its notices and handoffs on first use."""
        watch = self.by_queue.get(queue)
        if watch is not None:
            return watch
        event = asyncio.Event()
        consumers = self._pullers.queue(queue)

        async def on_publish(msg: Msg) -> None:
            data = msg.data
            watch = self.by_queue.get(queue)
            if watch is not None:
                watch.drained = False  # queued messages first: no handoff overtakes them
            qc = self._pullers.by_queue.get(queue) or consumers
            if len(data) == 1 and 48 <= data[0] <= 52:
                qc.note(data[0] - 48)
            else:
                qc.note_all()
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
        if watch is not None:  # a concurrent prepare won the race
            for extra in (sub, handoff_sub):
                with contextlib.suppress(Exception):
                    await extra.unsubscribe()
            return watch
        watch = self.by_queue[queue] = Watch(event=event, sub=sub, handoff_sub=handoff_sub)
        if self._poll_task is None:
            self._poll_task = asyncio.get_running_loop().create_task(
                self._poll_loop(), name="aos-nats-safety-poll"
            )
        return watch

    async def prepare(self, queue: str) -> None:
        """Set ``queue`` up for consuming: subscribe to its notices and handoffs, and ask the
        stream which priorities hold messages. The question goes out after the subscriptions
        on the same connection, so nothing stored from now on can be missed; its answer is
        taken by the first receive or wait (pipelined: a thousand prepares do not wait for a
        thousand round trips). Consumers are created by the first receive that needs them."""
        self._conn.check_open()
        watch = await self.watch(queue)
        if watch.ready or watch.asking is not None:
            return
        names = self._conn.subjects
        try:
            with self._conn.errors("prepare"):
                watch.asking = await self._conn.ask_subject_counts(
                    names.q_stream, names.queue_filter(queue)
                )
        except BrokerUnavailableError:
            pass  # asked again, with retries, by the first receive or wait

    async def discover(self, queue: str) -> bool:
        """Finish :meth:`prepare` (prepare first if needed): learn which priorities hold
        messages; True when some did."""
        watch = await self.watch(queue)  # subscribed first: what comes later is announced
        if watch.ready:
            return False
        names = self._conn.subjects
        counts: dict[str, int] | None = None
        asking, watch.asking = watch.asking, None
        if asking is not None:
            try:
                counts = await self._conn.counted(asking)
            except Exception:  # no answer, or a failure: ask again below, with retries
                counts = None
        if counts is None:
            counts = await self._conn.subject_counts(names.q_stream, names.queue_filter(queue))
        if watch.ready:  # a concurrent discovery finished first
            return False
        qc = self._pullers.queue(queue)
        found = False
        for subject, count in counts.items():
            priority = _priority_of(subject)
            if count > 0 and priority is not None:
                qc.note(priority)
                found = True
        watch.ready = True
        if found:
            watch.drained = False
        return found

    def unprepare(self, queue: str) -> None:
        """``queue`` was deleted: the next receive or wait asks the stream again."""
        watch = self.by_queue.get(queue)
        if watch is not None:
            watch.ready = False
        self.timers.drop(queue)

    # ------------------------------------------------------------------ waking
    def _due(self, queue: str, priority: int | None) -> None:
        """A due time of ``queue`` came (from the timer): a lock deadline (any priority) is
        spent, and the queue is woken."""
        if priority is None:
            watch = self.by_queue.get(queue)
            if watch is not None:
                watch.lock_due = float("inf")
        self._wake_now(queue, priority)

    def _wake_now(self, queue: str, priority: int | None) -> None:
        """Messages of ``queue`` (one priority or any) may be available now: note it for
        the receive and wake the waiters."""
        qc = self._pullers.by_queue.get(queue)
        if qc is not None:
            if priority is None:
                qc.note_all()
            else:
                qc.note(priority)
        watch = self.by_queue.get(queue)
        if watch is not None:
            watch.drained = False
            watch.event.set()

    def schedule_wake(self, queue: str, delay: float, priority: int | None = None) -> None:
        """Messages of ``queue`` (one priority or any) may be available in ``delay`` s."""
        if delay <= 0:
            self._wake_now(queue, priority)
            return
        qc = self._pullers.by_queue.get(queue)
        at = time.monotonic() + delay + SERVER_MARGIN
        if qc is not None:
            slots = qc.slots if priority is None else [qc.slots[priority]]
            for puller in slots:
                if puller is not None:
                    puller.may_have(at)
            if priority is not None and qc.slots[priority] is None:
                qc.wanted[priority] = True
        if queue in self.by_queue:
            self.timers.at(at, queue, priority)

    async def notify(self, queue: str, priority: int) -> None:
        """Wake waiters on ``queue``: in this process directly, elsewhere by a tiny core
        message naming the priority (the connection does not echo it back to us)."""
        self.schedule_wake(queue, 0.0, priority)
        with contextlib.suppress(Exception):
            await self._conn.nc.publish(self._conn.subjects.notice(queue), DIGITS[priority])

    async def wait(self, queue: str, timeout: float | None) -> None:
        """Return when something was published to ``queue`` (any process), a due time of
        this engine comes (a delay ending, a lock of the queue running out), the safety poll
        finds messages, the engine closes, or after ``timeout`` seconds of real time (None:
        no timeout, and no timer)."""
        self._conn.check_open()
        watch = self.by_queue.get(queue)
        if watch is None or not watch.ready:
            if await self.discover(queue):
                return
            watch = self.by_queue[queue]
        if watch.event.is_set():
            watch.event.clear()
            watch.active_at = self._clock.monotonic()
            return
        due = self._locks.earliest(queue)
        if due != float("inf") and due != watch.lock_due:
            if due <= time.monotonic():
                return  # a lock ran out: the next receive hands it back
            watch.lock_due = due
            self.timers.at(due + SERVER_MARGIN, queue, None)
        watch.waiters += 1
        try:
            if timeout is None:
                await watch.event.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, timeout)):  # no extra task
                        await watch.event.wait()
        finally:
            watch.waiters -= 1
            watch.active_at = self._clock.monotonic()
        watch.event.clear()

    def wake_all(self) -> None:
        """Wake every waiter (a reconnect, or close)."""
        for watch in self.by_queue.values():
            watch.event.set()

    def reconnected(self) -> None:
        """After a reconnect notices may have been lost: every waiter wakes, and the safety
        poll runs at once over every watched queue (one request, not one per queue; it goes
        out after the client subscribed again), until one such poll succeeds."""
        self._after_reconnect = True
        self._poll_now.set()
        self.wake_all()

    # ------------------------------------------------------------------ safety poll
    async def _poll_loop(self) -> None:
        """Every ``SAFETY_POLL_SECONDS`` while some queue is waited on, and at once after a
        reconnect: :meth:`poll`."""
        while not self._conn.closing:
            if not self._poll_now.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SAFETY_POLL_SECONDS):
                        await self._poll_now.wait()
            self._poll_now.clear()
            if self._conn.closing:
                return
            every = self._after_reconnect
            if every or any(w.waiters for w in self.by_queue.values()):
                if await self.poll(every=every) and every:
                    self._after_reconnect = False

    async def poll(self, *, every: bool = False) -> bool:
        """One safety poll: wake each waiting queue (``every``: each watched queue) that
        holds more messages than this process has locked, and learn the priorities that
        hold them. False when the server did not answer."""
        conn = self._conn
        names = conn.subjects
        self.polls += 1
        try:
            with conn.errors("safety poll"):
                info = await asyncio.wait_for(
                    conn.js.stream_info(names.q_stream, subjects_filter=names.all_queues),
                    _POLL_TIMEOUT,
                )
        except Exception:  # unavailable now: the next poll comes anyway
            _log.debug("NATS safety poll failed", exc_info=True)
            return False
        subjects = info.state.subjects or {}
        if not subjects:
            return True
        waiting = {
            queue_token(q): q for q, w in self.by_queue.items() if every or (w.waiters and w.ready)
        }
        stored: dict[str, list[tuple[int, int]]] = {}
        for subject, count in subjects.items():
            parts = str(subject).split(".")
            queue = waiting.get(parts[-2]) if len(parts) >= 2 else None
            priority = _priority_of(str(subject))
            if queue is not None and priority is not None and int(count) > 0:
                stored.setdefault(queue, []).append((priority, int(count)))
        for queue, found in stored.items():
            if sum(n for _, n in found) <= self._locks.count(queue):
                continue  # all of them are locked here
            qc = self._pullers.queue(queue)
            for priority, _ in found:
                qc.note(priority)
            watch = self.by_queue[queue]
            watch.drained = False
            watch.event.set()
        return True

    async def close(self) -> None:
        """Wake every waiter, stop the timer and the safety poll, forget the watches."""
        for watch in self.by_queue.values():
            watch.event.set()
        self.timers.close()
        task, self._poll_task = self._poll_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.by_queue.clear()


def _priority_of(subject: str) -> int | None:
    """The priority a queue subject ``<ns>.q.<token>.<p>`` stores."""
    tail = subject.rsplit(".", 1)[-1]
    if len(tail) == 1 and "0" <= tail <= "4":
        return int(tail)
    return None
