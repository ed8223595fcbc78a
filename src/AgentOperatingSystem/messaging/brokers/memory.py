"""The in-memory engine (``memory://``): fast, in one process, gone when the process ends.

Each queue keeps a heap of ready messages ordered by (priority, arrival), a heap of delayed
ones ordered by availability time, and the locked ones; lock expiry is applied lazily on
receive. Messages published without encoding (no compression, encryption or signature) are
kept as the very :class:`Message` object the publisher passed: treat delivered messages as
read-only.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from typing import Sequence

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import BrokerClosedError, DuplicateMessageError, QueueFullError
from ..policy import DeliveryOptions
from ..types import Message
from .base import DeadLetter, Delivery, Envelope, Settlement

__all__ = ["MemoryBroker"]


class _Entry:
    __slots__ = (
        "attempts",
        "available_at",
        "body",
        "enqueued_at",
        "expires_at",
        "last_error",
        "locked_until",
        "message",
        "message_id",
        "options",
        "priority",
        "seq",
        "token",
    )

    def __init__(
        self,
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
        self.message_id = message_id
        self.priority = priority
        self.seq = seq
        self.body = body
        self.message = message
        self.options = options
        self.available_at = available_at
        self.expires_at = expires_at
        self.enqueued_at = enqueued_at
        self.attempts = 0
        self.token: str | None = None
        self.locked_until = 0.0
        self.last_error: str | None = None


class _Queue:
    __slots__ = ("dead", "delayed", "inflight", "live", "lock_heap", "ready", "waiters")

    def __init__(self) -> None:
        self.ready: list[tuple[int, int, _Entry]] = []
        self.delayed: list[tuple[float, int, _Entry]] = []
        self.inflight: dict[str, _Entry] = {}
        self.lock_heap: list[tuple[float, int, str, str]] = []
        self.live: dict[str, _Entry] = {}
        self.dead: dict[str, DeadLetter] = {}
        self.waiters: set[asyncio.Future[None]] = set()


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
        if len(envelopes) == 1:  # the common case, without the bookkeeping of a batch
            env = envelopes[0]
            q = self._q(env.queue)
            if env.dedup_key is not None and dedup_window > 0:
                if self._dedup:
                    self._expire_keys(now)
                if env.dedup_key in self._dedup:
                    return [False]
            if env.message_id in q.live:
                raise DuplicateMessageError(
                    f"message {env.message_id} is already in queue {env.queue!r}"
                )
            if max_depth is not None and len(q.live) >= max_depth:
                raise QueueFullError(
                    f"queue {env.queue!r} is full ({max_depth} messages); publish refused"
                )
            self._insert(q, env, now, dedup_window)
            return [True]
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
                raise DuplicateMessageError(
                    f"message {env.message_id} is already in queue {env.queue!r}"
                )
            seen_ids.add((env.queue, env.message_id))
            if key is not None:
                seen_keys.add(key)
            adding[env.queue] = adding.get(env.queue, 0) + 1
            if max_depth is not None and len(q.live) + adding[env.queue] > max_depth:
                raise QueueFullError(
                    f"queue {env.queue!r} is full ({max_depth} messages); publish refused"
                )
            results.append(True)
        for env, ok in zip(envelopes, results):
            if ok:
                self._insert(self._queues[env.queue], env, now, dedup_window)
        return results

    def _insert(self, q: _Queue, env: Envelope, now: float, dedup_window: float) -> None:
        seq = next(self._seq)
        entry = _Entry(
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
        else:
            heapq.heappush(q.ready, (env.priority, seq, entry))
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
            if q.live.get(entry.message_id) is entry and entry.token is None:
                heapq.heappush(q.ready, (entry.priority, entry.seq, entry))
        locks = q.lock_heap
        while locks and locks[0][0] <= now:
            _, _, message_id, token = heapq.heappop(locks)
            entry_ = q.inflight.get(message_id)
            if entry_ is not None and entry_.token == token and entry_.locked_until <= now:
                del q.inflight[message_id]
                entry_.token = None
                heapq.heappush(q.ready, (entry_.priority, entry_.seq, entry_))

    async def receive(self, queue: str, max_messages: int, lock_seconds: float) -> list[Delivery]:
        """Lock up to ``max_messages`` available messages, priority first then FIFO."""
        self._check()
        q = self._queues.get(queue)
        if q is None:
            return []
        now = self._clock.now()
        if q.delayed or q.lock_heap:
            self._promote(q, now)
        ready = q.ready
        out: list[Delivery] = []
        until = now + lock_seconds
        while ready and len(out) < max_messages:
            _, seq, entry = heapq.heappop(ready)
            if q.live.get(entry.message_id) is not entry or entry.token is not None:
                continue  # a stale heap item (settled or already re-queued)
            token = str(next(self._tokens))
            entry.token = token
            entry.attempts += 1
            entry.locked_until = until
            q.inflight[entry.message_id] = entry
            heapq.heappush(q.lock_heap, (until, seq, entry.message_id, token))
            out.append(
                Delivery(
                    queue,
                    entry.message_id,
                    token,
                    entry.attempts,
                    entry.priority,
                    entry.enqueued_at,
                    entry.expires_at,
                    entry.body,
                    entry.message,
                    entry.options,
                    entry.last_error,
                )
            )
        return out

    def _locked(self, q: _Queue, s: Settlement) -> _Entry | None:
        entry = q.inflight.get(s.message_id)
        if entry is None or entry.token != s.token:
            return None
        if entry.locked_until <= self._clock.now():
            return None  # the lock expired: the message belongs to the queue again
        return entry

    async def ack(
        self,
        queue: str,
        settlements: Sequence[Settlement],
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
        for s in settlements:
            entry = self._locked(q, s)
            if entry is None:
                results.append(False)
                continue
            del q.inflight[s.message_id]
            del q.live[s.message_id]
            entry.token = None
            results.append(True)
        if processed_key is not None and all(results):
            now = self._clock.now()
            expires = now + max(processed_ttl, 0.0)
            self._processed[processed_key] = expires
            self._processed_order.append((expires, processed_key))
            if outbox:
                await self.send(outbox)
        return results

    async def release(
        self, queue: str, settlement: Settlement, *, delay: float = 0.0, error: str | None = None
    ) -> bool:
        """Unlock for redelivery after ``delay`` seconds."""
        self._check()
        q = self._queues.get(queue)
        entry = self._locked(q, settlement) if q is not None else None
        if q is None or entry is None:
            return False
        del q.inflight[settlement.message_id]
        entry.token = None
        entry.last_error = error
        now = self._clock.now()
        if delay > 0:
            entry.available_at = now + delay
            heapq.heappush(q.delayed, (entry.available_at, entry.seq, entry))
        else:
            heapq.heappush(q.ready, (entry.priority, entry.seq, entry))
            self._notify(q)
        return True

    async def renew(
        self, queue: str, settlements: Sequence[Settlement], lock_seconds: float
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
            heapq.heappush(q.lock_heap, (until, entry.seq, entry.message_id, s.token))
            out.append(True)
        return out

    async def dead_letter(
        self, queue: str, settlement: Settlement, *, reason: str, error: str | None = None
    ) -> bool:
        """Move a locked message to the dead-letter queue."""
        self._check()
        q = self._queues.get(queue)
        entry = self._locked(q, settlement) if q is not None else None
        if q is None or entry is None:
            return False
        del q.inflight[settlement.message_id]
        del q.live[settlement.message_id]
        entry.token = None
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
            raise DuplicateMessageError(f"message {message_id} is already in queue {queue!r}")
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

    async def wait(self, queue: str, timeout: float) -> None:
        """Return on the next publish/release to the queue, or after ``timeout`` seconds."""
        self._check()
        q = self._q(queue)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        q.waiters.add(fut)
        handle = loop.call_later(max(0.0, timeout), _wake, fut)
        try:
            await fut
        finally:
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


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
