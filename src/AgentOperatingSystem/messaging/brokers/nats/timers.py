"""The engine's one timer: local due times that wake ``wait``.

A release with a delay, a delayed message handed back until it is due, a handoff requeued
with a delay and the lock deadlines of a queue waited on each come due at a known moment.
They all go into one heap per engine, and one event-loop timer is armed at the earliest of
them (re-armed when an earlier one is added), so a thousand idle agents cost no timer each.

Times are ``time.monotonic()``: a lock is the consumer's ``ack_wait`` and a delay a
``nak(delay)``, both counted by the server in real time, so this is when they come due.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Callable

__all__ = ["DueTimes"]

#: Wake-ups closer together than this (seconds) are handled by one firing of the timer.
_SLACK = 0.002


class DueTimes:
    """A heap of ``(due, seq, queue, priority)`` and the one timer handle armed at its head.

    ``on_due(queue, priority)`` is called (synchronously, from the timer) for every entry
    that came due; ``priority`` None means "any priority of the queue".
    """

    def __init__(self, on_due: Callable[[str, int | None], None]) -> None:
        self._on_due = on_due
        self._heap: list[tuple[float, int, str, int | None]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, due: float, queue: str, priority: int | None = None) -> None:
        """Call ``on_due(queue, priority)`` once ``time.monotonic()`` reaches ``due``."""
        if self._closed:
            return
        heapq.heappush(self._heap, (due, next(self._seq), queue, priority))
        if due < self._armed_at:
            self._arm(due)

    def _arm(self, due: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        # loop time is time.monotonic() on the default loop; convert anyway
        self._handle = loop.call_at(loop.time() + max(0.0, due - time.monotonic()), self._fire)
        self._armed_at = due

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = float("inf")
        heap = self._heap
        limit = time.monotonic() + _SLACK
        while heap and heap[0][0] <= limit:
            _, _, queue, priority = heapq.heappop(heap)
            self._on_due(queue, priority)
        if heap and not self._closed:
            self._arm(heap[0][0])

    def drop(self, queue: str) -> None:
        """Forget the due times of a deleted queue."""
        kept = [e for e in self._heap if e[2] != queue]
        if len(kept) != len(self._heap):
            heapq.heapify(kept)
            self._heap = kept

    def close(self) -> None:
        """Disarm the timer and forget every due time."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._heap.clear()
