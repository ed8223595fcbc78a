"""Clocks: the system clock, and a manual one that tests advance by hand.

Everything in the bus and its engines that depends on time (locks, delays, backoff, TTL,
dedup windows) reads ``clock.now()`` (epoch seconds) and waits with ``clock.sleep()``, so a
test can move time forward with :meth:`ManualClock.advance` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time."""

    def now(self) -> float:
        """Seconds since the epoch (wall time; shared between processes)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` have passed on this clock."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """Return ``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that only moves when :meth:`advance` is called.

    ``sleep()`` returns once the clock has been advanced past its deadline.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._mono = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        """Current manual time (epoch seconds)."""
        return self._now

    def monotonic(self) -> float:
        """Manual monotonic time."""
        return self._mono

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock is advanced by at least ``seconds``."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._counter), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def advance_and_settle(self, seconds: float, rounds: int = 20) -> None:
        """Advance, then yield to the event loop a few times so woken tasks can run."""
        self.advance(seconds)
        for _ in range(rounds):
            await asyncio.sleep(0)
