"""The engine harness: every contract test runs once per engine.

memory and sqlite run on a :class:`ManualClock`: time moves only when a test says so, and
``advance`` moves it at once. nats runs on the real clock against the session nats-server,
because the server keeps its own time: a lock is the consumer's ``ack_wait``, a delay is a
``nak(delay)`` and the dedup window is the stream's ``duplicate_window``, all counted by the
server in real time. So on nats ``advance`` really sleeps; each test advances only a little
past the deadline it checks (a lock of 1 s is checked after 1.3 s).

The nats case carries the ``nats`` marker, and its namespace (a fresh one per test) has its
streams and buckets deleted when the test ends, after every bus of the harness stopped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import SYSTEM_CLOCK, Clock, ManualClock
from tests.support.engines import engine_params, engine_url
from tests.support.waiting import eventually


@dataclass
class Harness:
    """Builds buses on one engine and moves that engine's time."""

    engine: str
    url: str
    clock: Clock
    buses: list[MessageBus] = field(default_factory=list)

    @property
    def manual(self) -> bool:
        """True when time moves only by :meth:`advance` (memory, sqlite)."""
        return isinstance(self.clock, ManualClock)

    async def advance(self, seconds: float) -> None:
        """Move time forward: instantly on a manual clock; on nats by sleeping, since the
        server times locks, delays and the dedup window itself (see the module docstring)."""
        if isinstance(self.clock, ManualClock):
            self.clock.advance(seconds)
            for _ in range(5):
                await asyncio.sleep(0)
        else:
            await asyncio.sleep(seconds)

    async def bus(self, **overrides: Any) -> MessageBus:
        """A started bus on this engine (stopped by the fixture)."""
        settings: dict[str, Any] = {
            "broker_url": self.url,
            "lock_seconds": 1.0,
            "poll_interval": 0.05,
            "dedup_window_seconds": 2.0,
            "shutdown_timeout": 5.0,
        }
        settings.update(overrides)
        bus = MessageBus(MessageBusConfig(**settings), clock=self.clock)
        await bus.start()
        self.buses.append(bus)
        return bus

    async def eventually(self, predicate: Any, timeout: float = 10.0) -> None:
        """Wait (real time, bounded) until ``predicate()`` (sync or async) is true."""
        await eventually(predicate, timeout)


@pytest.fixture(params=engine_params())
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    engine: str = request.param
    clock: Clock = SYSTEM_CLOCK if engine == "nats" else ManualClock()
    async with engine_url(request, engine, tmp_path, name="contract") as url:
        h = Harness(engine, url, clock)
        try:
            yield h
        finally:
            for bus in h.buses:
                await bus.stop()
