"""Queue depths: the ``max_depth`` check of ``send``, and ``depth``, ``dead_letter_depth``
and ``queues`` (stream subject counts, once the acks sent so far are confirmed).

``max_depth`` is checked before publishing. Far below the limit an estimate is trusted:
the depth of every queue from one snapshot of the whole stream (one ``STREAM.INFO`` listing
the subjects that hold messages, less than ``DEPTH_CACHE_SECONDS`` old and shared by every
queue, so its cost does not grow with the number of queues published to), plus this
broker's sends since. Near the limit the queue's depth is measured, after the acks sent so
far are confirmed. This is not atomic across processes: concurrent publishers can overshoot
by their in-flight sends.
"""

from __future__ import annotations

import asyncio
import time

from ...errors import QueueFullError
from .acks import Acks
from .connection import Connection
from .subjects import queue_token, token_queue

__all__ = ["DEPTH_CACHE_SECONDS", "Depths"]

#: How long a measured queue depth is trusted by the ``max_depth`` check far below the limit.
DEPTH_CACHE_SECONDS = 0.5


class Depths:
    """Queue depths for the ``max_depth`` check: a shared snapshot, measured near the limit."""

    def __init__(self, conn: Connection, acks: Acks) -> None:
        self._conn = conn
        self._acks = acks
        self._cache: dict[str, tuple[float, int]] = {}  # queue -> (measured at, depth)
        self._locks: dict[str, asyncio.Lock] = {}
        #: the stream snapshot: queue token -> messages, when it was taken, and the sends of
        #: this broker to each queue since
        self._snapshot: dict[str, int] = {}
        self._snapshot_at = -float("inf")
        self._sent: dict[str, int] = {}
        self._snapshot_lock = asyncio.Lock()
        #: snapshots taken (a figure for tests and benchmarks)
        self.snapshots = 0

    async def depth(self, queue: str) -> int:
        """Messages in the queue (available, delayed or locked), dead letters excluded."""
        self._conn.check_open()
        await self._acks.settle()
        return await self._measure(queue)

    async def _measure(self, queue: str) -> int:
        conn = self._conn
        counts = await conn.subject_counts(
            conn.subjects.q_stream, conn.subjects.queue_filter(queue)
        )
        depth = sum(counts.values())
        self._cache[queue] = (time.monotonic(), depth)
        return depth

    def _trusted(self, queue: str, count: int, max_depth: int, margin: int) -> bool:
        cached = self._cache.get(queue)
        return (
            cached is not None
            and time.monotonic() - cached[0] < DEPTH_CACHE_SECONDS
            and cached[1] + count <= max_depth - margin
        )

    async def _estimate(self, queue: str) -> int:
        """The queue's depth from a fresh enough snapshot of the stream, plus sends since."""
        if time.monotonic() - self._snapshot_at >= DEPTH_CACHE_SECONDS:
            async with self._snapshot_lock:  # one snapshot in flight, shared by every queue
                if time.monotonic() - self._snapshot_at >= DEPTH_CACHE_SECONDS:
                    await self._take_snapshot()
        return self._snapshot.get(queue_token(queue), 0) + self._sent.get(queue, 0)

    async def _take_snapshot(self) -> None:
        names = self._conn.subjects
        started = time.monotonic()
        sent, self._sent = self._sent, {}  # sends from now on are counted on top
        try:
            counts = await self._conn.subject_counts(names.q_stream, names.all_queues)
        except BaseException:
            for queue, n in sent.items():
                self._sent[queue] = self._sent.get(queue, 0) + n
            raise
        per_queue: dict[str, int] = {}
        for subject, count in counts.items():
            token = subject.rsplit(".", 2)[-2]
            per_queue[token] = per_queue.get(token, 0) + count
        self._snapshot, self._snapshot_at = per_queue, started
        self.snapshots += 1

    async def check(self, counts: dict[str, int], max_depth: int) -> None:
        """Refuse (QueueFullError) when a queue would go over ``max_depth``.

        Far below the limit the estimate of the shared snapshot is trusted (see the module
        docs); near it, the depth is measured.
        """
        margin = max(1, max_depth // 10)
        for queue, count in counts.items():
            if self._trusted(queue, count, max_depth, margin):
                continue
            if await self._estimate(queue) + count <= max_depth - margin:
                continue
            lock = self._locks.get(queue)
            if lock is None:
                lock = self._locks[queue] = asyncio.Lock()
            async with lock:
                if self._trusted(queue, count, max_depth, margin):
                    continue
                await self._acks.settle()
                current = await self._measure(queue)
            if current + count > max_depth:
                raise QueueFullError(
                    f"queue {queue!r} holds {current} messages; max_queue_size is {max_depth}"
                )

    def count_sent(self, queue: str, count: int) -> None:
        """This broker enqueued ``count`` more messages in ``queue``."""
        cached = self._cache.get(queue)
        if cached is not None:
            self._cache[queue] = (cached[0], cached[1] + count)
        self._sent[queue] = self._sent.get(queue, 0) + count

    def forget(self, queue: str) -> None:
        """Drop the cached depth of a deleted queue."""
        self._cache.pop(queue, None)
        self._sent.pop(queue, None)
        self._snapshot.pop(queue_token(queue), None)

    async def dead_letter_depth(self, queue: str) -> int:
        """Messages in the queue's dead-letter queue."""
        self._conn.check_open()
        await self._acks.settle()
        conn = self._conn
        subject = conn.subjects.dead(queue)
        return (await conn.subject_counts(conn.subjects.dlq_stream, subject)).get(subject, 0)

    async def queues(self) -> list[str]:
        """Names of queues that hold messages or dead letters."""
        self._conn.check_open()
        await self._acks.settle()
        names = self._conn.subjects
        found: set[str] = set()
        for stream, pattern, index in (
            (names.q_stream, names.all_queues, -2),
            (names.dlq_stream, names.all_dead, -1),
        ):
            for subject, count in (await self._conn.subject_counts(stream, pattern)).items():
                name = token_queue(subject.split(".")[index])
                if count > 0 and name is not None:
                    found.add(name)
        return sorted(found)
