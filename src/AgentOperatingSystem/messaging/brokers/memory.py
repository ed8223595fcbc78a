"""The in-memory engine (``memory://``): fast, in one process, gone when the process ends.

Each queue keeps its ready messages in one FIFO per priority for first deliveries (they
arrive in order, so no heap and no per-message heap item) plus a heap ordered by (priority,
arrival) for the ones that come back (released, lock expired, delay over); receive takes
whichever of the two comes first. A heap of delayed messages is ordered by availability
time, and the locked ones are kept with their lock deadlines; lock expiry is applied
lazily on receive. Messages published without encoding (no compression, encryption or
signature) are kept as the very :class:`Message` object the publisher passed: treat
delivered messages as read-only.

An idle consumer parks a future in its queue's ``waiters`` (no timer); a send or release to
the queue wakes it, and the next due time of a queue that is waited on (a delay or backoff
ending, a lock expiring) is set in the engine's one timer (:class:`~.wakeups.Wakeups`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from typing import Sequence

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import BrokerClosedError, DuplicateMessageError, QueueFullError
from ..policy import DEFAULT_OPTIONS, DeliveryOptions
from ..types import Message
from .base import DeadLetter, Delivery, Envelope, SettlementRef
from .wakeups import Wakeups

__all__ = ["MemoryBroker"]


class _Entry(Delivery):
    """A queued message; handed out as its own :class:`Delivery` (no copy per delivery)."""

    __slots__ = ("available_at", "live", "locked_until", "seq")

    def __init__(
        self,
        queue: str,
        message_id: str,
        priority: int,
        seq: int,
        body: bytes | None,
        message: Message | None,
        options: DeliveryOptions,
        available_at: float,
        expires_at: float | None,
        enqueued_at: float,
    ) -> None:
        self.queue = queue
        self.message_id = message_id
        self.token = ""
        self.attempts = 0
        self.priority = priority
        self.enqueued_at = enqueued_at
        self.expires_at = expires_at
        self.body = body
        self.message = message
        self.options = options
        self.last_error = None
        self.seq = seq
        self.available_at = available_at
        self.locked_until = 0.0
        self.live = True


class _Queue:
    __slots__ = (
        "dead",
        "delayed",
        "fresh",
        "fresh_count",
        "inflight",
        "levels",
        "live",
        "lock_heap",
        "ready",
        "waiters",
    )

    def __init__(self) -> None:
        # first deliveries, one FIFO per priority; ``levels`` are their priorities, sorted
        self.fresh: dict[int, deque[_Entry]] = {}
        self.levels: list[int] = []
        self.fresh_count = 0  # items in the FIFOs, stale ones included
        # messages that came back, with the seq they arrived with: (priority, seq, entry)
        self.ready: list[tuple[int, int, _Entry]] = []
        self.delayed: list[tuple[float, int, _Entry]] = []
        self.inflight: dict[str, _Entry] = {}
        # one record per receive call: (lock deadline, seq, token, the entries it locked)
        self.lock_heap: list[tuple[float, int, str, list[_Entry]]] = []
        self.live: dict[str, _Entry] = {}
        self.dead: dict[str, DeadLetter] = {}
        self.waiters: set[asyncio.Future[None]] = set()

    def append(self, entry: _Entry) -> None:
        """Queue a first delivery at the back of its priority's FIFO."""
        fifo = self.fresh.get(entry.priority)
        if fifo is None:
            fifo = self.fresh[entry.priority] = deque()
            self.levels.append(entry.priority)
            self.levels.sort()
        fifo.append(entry)
        self.fresh_count += 1

    def take(self, n: int) -> list[_Entry]:
        """Take up to ``n`` ready entries off the queue, priority first then FIFO, skipping
        stale items (settled, dead-lettered or already taken)."""
        out: list[_Entry] = []
        fresh = self.fresh
        ready = self.ready
        if not ready:  # only first deliveries: read the FIFOs in priority order
            for level in self.levels:
                fifo = fresh[level]
                while fifo and len(out) < n:
                    entry = fifo.popleft()
                    self.fresh_count -= 1
                    if entry.live and not entry.token:
                        out.append(entry)
                if len(out) >= n:
                    break
            return out
        pop = heapq.heappop
        while len(out) < n:
            head: _Entry | None = None
            for level in self.levels:  # the first FIFO with a live entry at its front
                fifo = fresh[level]
                while fifo and (not fifo[0].live or fifo[0].token):
                    fifo.popleft()
                    self.fresh_count -= 1
                if fifo:
                    head = fifo[0]
                    break
            if ready:
                top = ready[0]
                if not top[2].live or top[2].token:
                    pop(ready)  # a stale heap item (settled or already re-queued)
                    continue
                if head is None or (top[0], top[1]) < (head.priority, head.seq):
                    out.append(pop(ready)[2])
                    continue
            if head is None:
                break
            fresh[head.priority].popleft()
            self.fresh_count -= 1
            out.append(head)
        return out


class MemoryBroker:
    """Engine for ``memory://``. See :class:`~.base.Broker` for the contract."""

    needs_bytes = False

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)
        self._dedup: dict[str, float] = {}
        self._dedup_order: deque[tuple[float, str]] = deque()
        self._processed: dict[str, float] = {}
        self._processed_order: deque[tuple[float, str]] = deque()
        self._bindings: dict[str, dict[str, None]] = {}
        self._closed = False
        #: the engine's one timer of due times (waiters stay in each queue's ``waiters``)
        self.wakeups = Wakeups(clock, "aos-memory-timer", on_due=self._due)

    def _due(self, queue: str) -> None:
        """A due time of ``queue`` came: wake its waiters."""
        q = self._queues.get(queue)
        if q is not None and q.waiters:
            self._notify(q)

    def _q(self, queue: str) -> _Queue:
        q = self._queues.get(queue)
        if q is None:
            if self._closed:
                raise BrokerClosedError("the memory engine is closed")
            q = self._queues[queue] = _Queue()
        return q

    def _check(self) -> None:
        if self._closed:
            raise BrokerClosedError("the memory engine is closed")

    @staticmethod
    def _notify(q: _Queue) -> None:
        if q.waiters:
            for fut in q.waiters:
                if not fut.done():
                    fut.set_result(None)
            q.waiters.clear()

    def _expire_keys(self, now: float) -> None:
        order = self._dedup_order
        while order and order[0][0] <= now:
            expires, key = order.popleft()
            if self._dedup.get(key) == expires:
                del self._dedup[key]
        order = self._processed_order
        while order and order[0][0] <= now:
            expires, key = order.popleft()
            if self._processed.get(key) == expires:
                del self._processed[key]

    async def send(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_depth: int | None = None,
        dedup_window: float = 0.0,
    ) -> list[bool]:
        """Enqueue atomically: checks every envelope first, then inserts them all."""
        self._check()
        now = self._clock.now()
        if self._dedup:
            self._expire_keys(now)
        results: list[bool] = []
        adding: dict[str, int] = {}
        seen_keys: set[str] = set()
        seen_ids: set[tuple[str, str]] = set()
        for env in envelopes:
            q = self._q(env.queue)
            key = env.dedup_key
            if key is not None and dedup_window > 0 and (key in self._dedup or key in seen_keys):
                results.append(False)
                continue
            if env.message_id in q.live or (env.queue, env.message_id) in seen_ids:
                raise _duplicate(env.queue, env.message_id)
            seen_ids.add((env.queue, env.message_id))
            if key is not None:
                seen_keys.add(key)
            adding[env.queue] = adding.get(env.queue, 0) + 1
            if max_depth is not None and len(q.live) + adding[env.queue] > max_depth:
                raise _full(env.queue, max_depth)
            results.append(True)
        for env, ok in zip(envelopes, results):
            if ok:
                self._insert(self._queues[env.queue], env, now, dedup_window)
        return results

    def put_local(self, queue: str, message: Message, max_depth: int | None) -> None:
        """Fast path for the bus: enqueue a plain message object (no body, no options,
        no delay, no TTL, no dedup) without building an envelope."""
        if self._closed:
            raise BrokerClosedError("the memory engine is closed")
        q = self._queues.get(queue)
        if q is None:
            q = self._q(queue)
        message_id = message.message_id
        if message_id in q.live:
            raise _duplicate(queue, message_id)
        if max_depth is not None and len(q.live) >= max_depth:
            raise _full(queue, max_depth)
        seq = next(self._seq)
        priority: int = message.priority._value_
        entry = _Entry(
            queue,
            message_id,
            priority,
            seq,
            None,
            message,
            DEFAULT_OPTIONS,
            0.0,
            None,
            self._clock.now(),
        )
        q.live[message_id] = entry
        fifo = q.fresh.get(priority)
        if fifo is None:
            q.append(entry)
        else:  # q.append inlined: this is the hot path
            fifo.append(entry)
            q.fresh_count += 1
        if q.waiters:
            self._notify(q)

    def _insert(self, q: _Queue, env: Envelope, now: float, dedup_window: float) -> None:
        seq = next(self._seq)
        entry = _Entry(
            env.queue,
            env.message_id,
            env.priority,
            seq,
            env.body,
            env.message,
            env.options,
            env.available_at,
            env.expires_at,
            now,
        )
        q.live[env.message_id] = entry
        if env.available_at > now:
            heapq.heappush(q.delayed, (env.available_at, seq, entry))
            if q.waiters:
                self.wakeups.at(env.queue, env.available_at)
        else:
            q.append(entry)
        if env.dedup_key is not None and dedup_window > 0:
            expires = now + dedup_window
            self._dedup[env.dedup_key] = expires
            self._dedup_order.append((expires, env.dedup_key))
        if q.waiters:
            self._notify(q)

    def _promote(self, q: _Queue, now: float) -> None:
        delayed = q.delayed
        while delayed and delayed[0][0] <= now:
            _, _, entry = heapq.heappop(delayed)
            if entry.live and not entry.token:
                heapq.heappush(q.ready, (entry.priority, entry.seq, entry))
        locks = q.lock_heap
        while locks and locks[0][0] <= now:
            _, _, token, entries = heapq.heappop(locks)
            for e in entries:
                if e.token == token and e.locked_until <= now and q.inflight.get(e.message_id) is e:
                    del q.inflight[e.message_id]
                    e.token = ""
                    heapq.heappush(q.ready, (e.priority, e.seq, e))

    async def receive(self, queue: str, max_messages: int, lock_seconds: float) -> list[Delivery]:
        """Lock up to ``max_messages`` available messages, priority first then FIFO."""
        self._check()
        q = self._queues.get(queue)
        if q is None:
            return []
        now = self._clock.now()
        if q.delayed or q.lock_heap:
            self._promote(q, now)
        if not q.fresh_count and not q.ready:
            return []
        out = q.take(max_messages)
        if not out:
            return []
        token = str(next(self._tokens))
        until = now + lock_seconds
        inflight = q.inflight
        for entry in out:
            entry.token = token
            entry.attempts += 1
            entry.locked_until = until
            inflight[entry.message_id] = entry
        heapq.heappush(q.lock_heap, (until, next(self._seq), token, out))
        if q.waiters:  # another consumer waits on this queue: wake it if the lock expires
            self.wakeups.at(queue, until)
        return list(out)

    def _locked(self, q: _Queue, s: SettlementRef) -> _Entry | None:
        entry = q.inflight.get(s.message_id)
        if entry is None or entry.token != s.token:
            return None
        if entry.locked_until <= self._clock.now():
            return None  # the lock expired: the message belongs to the queue again
        return entry

    def _unlock(self, queue: str, s: SettlementRef) -> tuple[_Queue, _Entry] | None:
        """Take the message ``s`` holds locked out of flight (release, dead-letter): its
        queue and entry, or None when the lock is lost."""
        self._check()
        q = self._queues.get(queue)
        entry = self._locked(q, s) if q is not None else None
        if q is None or entry is None:
            return None
        del q.inflight[s.message_id]
        entry.token = ""
        return q, entry

    async def ack(
        self,
        queue: str,
        settlements: Sequence[SettlementRef],
        *,
        processed_key: str | None = None,
        processed_ttl: float = 0.0,
        outbox: Sequence[Envelope] = (),
    ) -> list[bool]:
        """Remove settled messages; record the processed key and send the outbox with them."""
        self._check()
        q = self._queues.get(queue)
        if q is None:
            return [False] * len(settlements)
        results: list[bool] = []
        inflight = q.inflight
        live = q.live
        now = self._clock.now()
        for s in settlements:
            entry = inflight.get(s.message_id)
            if entry is None or entry.token != s.token or entry.locked_until <= now:
                results.append(False)
                continue
            del inflight[s.message_id]
            del live[s.message_id]
            entry.token = ""
            entry.live = False
            results.append(True)
        if processed_key is not None and all(results):
            expires = now + max(processed_ttl, 0.0)
            self._processed[processed_key] = expires
            self._processed_order.append((expires, processed_key))
            if outbox:
                await self.send(outbox)
        return results

    async def release(
        self, queue: str, settlement: SettlementRef, *, delay: float = 0.0, error: str | None = None
    ) -> bool:
        """Unlock for redelivery after ``delay`` seconds."""
        unlocked = self._unlock(queue, settlement)
        if unlocked is None:
            return False
        q, entry = unlocked
        entry.last_error = error
        now = self._clock.now()
        if delay > 0:
            entry.available_at = now + delay
            heapq.heappush(q.delayed, (entry.available_at, entry.seq, entry))
            if q.waiters:
                self.wakeups.at(queue, entry.available_at)
        else:
            heapq.heappush(q.ready, (entry.priority, entry.seq, entry))
            self._notify(q)
        return True

    async def renew(
        self, queue: str, settlements: Sequence[SettlementRef], lock_seconds: float
    ) -> list[bool]:
        """Extend locks."""
        self._check()
        q = self._queues.get(queue)
        out: list[bool] = []
        until = self._clock.now() + lock_seconds
        for s in settlements:
            entry = self._locked(q, s) if q is not None else None
            if q is None or entry is None:
                out.append(False)
                continue
            entry.locked_until = until
            heapq.heappush(q.lock_heap, (until, next(self._seq), s.token, [entry]))
            out.append(True)
        return out

    async def dead_letter(
        self, queue: str, settlement: SettlementRef, *, reason: str, error: str | None = None
    ) -> bool:
        """Move a locked message to the dead-letter queue."""
        unlocked = self._unlock(queue, settlement)
        if unlocked is None:
            return False
        q, entry = unlocked
        del q.live[entry.message_id]
        entry.live = False
        q.dead.pop(entry.message_id, None)
        q.dead[entry.message_id] = DeadLetter(
            queue,
            entry.message_id,
            entry.priority,
            entry.body,
            entry.message,
            entry.options,
            reason,
            error,
            entry.attempts,
            entry.enqueued_at,
            self._clock.now(),
        )
        return True

    async def put_dead_letter(
        self, envelope: Envelope, *, reason: str, error: str | None = None, attempts: int = 0
    ) -> bool:
        """Store the envelope straight in its queue's dead-letter queue (never deliverable);
        False when a dead letter of that id is there already."""
        self._check()
        q = self._q(envelope.queue)
        if envelope.message_id in q.dead:
            return False
        now = self._clock.now()
        q.dead[envelope.message_id] = DeadLetter(
            envelope.queue,
            envelope.message_id,
            envelope.priority,
            envelope.body,
            envelope.message,
            envelope.options,
            reason,
            error,
            attempts,
            now,
            now,
        )
        return True

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Oldest first."""
        self._check()
        q = self._queues.get(queue)
        if q is None:
            return []
        return list(itertools.islice(q.dead.values(), max(0, limit)))

    async def resubmit(self, queue: str, message_id: str) -> bool:
        """Move a dead letter back, attempts reset."""
        self._check()
        q = self._queues.get(queue)
        if q is None or message_id not in q.dead:
            return False
        if message_id in q.live:
            raise _duplicate(queue, message_id)
        dl = q.dead.pop(message_id)
        now = self._clock.now()
        self._insert(
            q,
            Envelope(
                queue,
                message_id,
                dl.priority,
                dl.body,
                dl.message,
                dl.options,
                available_at=now,
                expires_at=None,
            ),
            now,
            0.0,
        )
        return True

    async def purge_dead_letters(self, queue: str) -> int:
        """Delete all dead letters of a queue."""
        self._check()
        q = self._queues.get(queue)
        if q is None:
            return 0
        n = len(q.dead)
        q.dead.clear()
        return n

    async def depth(self, queue: str) -> int:
        """Live messages in the queue."""
        self._check()
        q = self._queues.get(queue)
        return len(q.live) if q is not None else 0

    async def dead_letter_depth(self, queue: str) -> int:
        """Dead letters of the queue."""
        self._check()
        q = self._queues.get(queue)
        return len(q.dead) if q is not None else 0

    async def queues(self) -> list[str]:
        """Queues holding messages or dead letters."""
        self._check()
        return sorted(name for name, q in self._queues.items() if q.live or q.dead)

    async def delete_queue(self, queue: str) -> None:
        """Drop the queue."""
        self._check()
        q = self._queues.pop(queue, None)
        if q is not None:
            self._notify(q)

    async def is_processed(self, key: str) -> bool:
        """Whether the exactly-once key is recorded."""
        self._check()
        expires = self._processed.get(key)
        return expires is not None and expires > self._clock.now()

    async def bind(self, topic: str, queue: str) -> None:
        """Bind a queue to a topic."""
        self._check()
        self._bindings.setdefault(topic, {})[queue] = None

    async def unbind(self, topic: str, queue: str) -> None:
        """Remove a binding."""
        self._check()
        self._bindings.get(topic, {}).pop(queue, None)

    async def bindings(self, topic: str) -> list[str]:
        """Queues bound to the topic, in binding order."""
        self._check()
        return list(self._bindings.get(topic, ()))

    async def prepare(self, queue: str) -> None:
        """Create the queue (nothing else to set up in process)."""
        self._check()
        self._q(queue)

    async def wait(self, queue: str, timeout: float | None) -> None:
        """Return on the next send/release to the queue, at its next due time (a delay or
        backoff ending, a lock expiring: set in the engine's one timer), on close, or after
        ``timeout`` seconds (None: no timeout). An idle wait is a parked future, no timer."""
        self._check()
        q = self._q(queue)
        if q.fresh_count or q.ready:  # something may be ready (stale items count too)
            return
        if q.delayed or q.lock_heap:
            due = _next_due(q)
            if due is not None:
                if due <= self._clock.now():
                    return
                self.wakeups.at(queue, due)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        q.waiters.add(fut)
        handle = loop.call_later(max(0.0, timeout), _wake, fut) if timeout is not None else None
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()
            q.waiters.discard(fut)

    async def close(self) -> None:
        """Forget everything; wake waiters."""
        if self._closed:
            return
        self._closed = True
        for q in self._queues.values():
            self._notify(q)
        self._queues.clear()
        await self.wakeups.close()


def _duplicate(queue: str, message_id: str) -> DuplicateMessageError:
    return DuplicateMessageError(f"message {message_id} is already in queue {queue!r}")


def _full(queue: str, max_depth: int) -> QueueFullError:
    return QueueFullError(f"queue {queue!r} is full ({max_depth} messages); publish refused")


def _next_due(q: _Queue) -> float | None:
    """The earliest time something of ``q`` becomes receivable by time alone: a delayed
    message's availability or a lock's deadline (lock records whose messages were all settled
    or renewed past them are dropped first)."""
    locks = q.lock_heap
    while locks:
        until, _, token, entries = locks[0]
        if any(e.token == token and e.locked_until <= until for e in entries):
            break
        heapq.heappop(locks)
    due: float | None = locks[0][0] if locks else None
    if q.delayed and (due is None or q.delayed[0][0] < due):
        due = q.delayed[0][0]
    return due


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
