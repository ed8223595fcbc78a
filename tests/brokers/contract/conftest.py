"""The engine harness: every contract test runs once per engine.

memory and sqlite run on a :class:`ManualClock` (time moves only when a test says so); nats
runs on the real clock against a nats-server this fixture starts, so ``advance`` sleeps there.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import SYSTEM_CLOCK, Clock, ManualClock
from tests.support.waiting import eventually

ENGINES = ["memory", "sqlite", "nats"]


@dataclass
class Harness:
    """Builds buses on one engine and moves that engine's time."""

    engine: str
    url: str
    clock: Clock
    buses: list[MessageBus] = field(default_factory=list)

    @property
    def manual(self) -> bool:
        return isinstance(self.clock, ManualClock)

    async def advance(self, seconds: float) -> None:
        """Move time forward: instantly on a manual clock, by sleeping on the real one."""
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


@pytest.fixture(params=ENGINES)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    engine = request.param
    clock: Clock
    if engine == "memory":
        url, clock = "memory://", ManualClock()
    elif engine == "sqlite":
        url, clock = f"sqlite:///{tmp_path / 'contract.db'}", ManualClock()
    else:
        server = request.getfixturevalue("nats_server")
        url, clock = f"{server.url}?namespace=t{uuid.uuid4().hex[:10]}", SYSTEM_CLOCK
    h = Harness(engine, url, clock)
    try:
        yield h
    finally:
        for bus in h.buses:
            await bus.stop()
