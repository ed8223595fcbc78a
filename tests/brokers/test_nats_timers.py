"""The NATS engine's one timer (:mod:`...brokers.nats.timers`): every local due time in one
heap, one event-loop timer armed at the earliest."""

from __future__ import annotations

import asyncio
import time

from AgentOperatingSystem.messaging.brokers.nats.timers import DueTimes


async def test_due_times_fire_in_order_from_one_timer() -> None:
    fired: list[tuple[str, int | None]] = []
    timers = DueTimes(lambda queue, priority: fired.append((queue, priority)))
    now = time.monotonic()
    timers.at(now + 0.15, "late", 4)
    timers.at(now + 0.05, "early", None)  # earlier: the one timer is re-armed
    timers.at(now + 0.10, "middle", 2)
    loop = asyncio.get_running_loop()
    scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
    for i in range(100):  # more due times, still one timer
        timers.at(now + 10 + i, f"q{i}")
    assert len(loop._scheduled) == scheduled  # type: ignore[attr-defined]
    await asyncio.sleep(0.3)
    assert fired == [("early", None), ("middle", 2), ("late", 4)]
    assert len(timers) == 100
    timers.drop("q0")
    assert len(timers) == 99
    timers.close()
    assert len(timers) == 0
    timers.at(now, "after-close")  # ignored once closed
    await asyncio.sleep(0.01)
    assert fired[-1] == ("late", 4)
