"""Charts over time: per agent, the published / acked / dead-lettered rates, the queue depth
and the handler latency (p50/p95), sampled on the node every ``interval`` seconds into a
bounded ring (``GET /admin/series``).

Memory is bounded twice: each agent keeps its last ``capacity`` samples (a ``deque`` with
``maxlen``), and at most ``max_agents`` agents are kept (the one longest without activity
goes first). A node running for a week holds the same ``capacity * max_agents`` samples at
most as one running for ten minutes.

The counters come from the bus's :class:`~.observability.BusTelemetry` (``counts()``, its
registry's handler-duration histograms) and the depths from the bus; nothing is added to the
bus's hot path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from aiohttp import web

from ..clock import SYSTEM_CLOCK, Clock
from ..observability.bus_telemetry import BusTelemetry

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_INTERVAL", "Sample", "SeriesSampler", "quantile"]

log = logging.getLogger("aos.messaging.dashboard")

DEFAULT_INTERVAL = 2.0
"""Seconds between samples."""
DEFAULT_CAPACITY = 300
"""Samples kept per agent (ten minutes at the default interval)."""
DEFAULT_MAX_AGENTS = 256
"""Agents kept at most."""
_DURATION = "message_bus_handler_duration_seconds"


@dataclass(frozen=True, slots=True)
class Sample:
    """One agent at one time: rates per second over the last interval, the depth then, and
    the handler latency quantiles of the handlers timed in the interval (None: none ran)."""

    t: float
    published: float
    acked: float
    dead_lettered: float
    depth: int
    p50_ms: float | None
    p95_ms: float | None


def quantile(bounds: Sequence[float], counts: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of a histogram given per bucket (not cumulative): ``counts[i]``
    observations ``<= bounds[i]`` (and above the bound before); one more count than bounds
    is the overflow bucket. Linear inside a bucket; None when empty."""
    total = sum(counts)
    if total <= 0:
        return None
    target = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n <= 0:
            continue
        if seen + n >= target:
            lower = bounds[i - 1] if i > 0 else 0.0
            if i >= len(bounds):
                return float(bounds[-1]) if bounds else None
            return lower + (bounds[i] - lower) * (target - seen) / n
        seen += n
    return float(bounds[-1]) if bounds else None


@dataclass(slots=True)
class _Agent:
    ring: deque[Sample]
    counts: tuple[int, int, int]
    buckets: tuple[float, ...]


class SeriesSampler:
    """Samples the bus every ``interval`` seconds into bounded rings, one per agent."""

    def __init__(
        self,
        telemetry: BusTelemetry | None,
        bus: Any,
        *,
        interval: float = DEFAULT_INTERVAL,
        capacity: int = DEFAULT_CAPACITY,
        max_agents: int = DEFAULT_MAX_AGENTS,
        clock: Clock | None = None,
    ) -> None:
        if interval <= 0 or capacity < 2 or max_agents < 1:
            raise ValueError("interval > 0, capacity >= 2 and max_agents >= 1 are required")
        self.telemetry = telemetry
        self.bus = bus
        self.interval = interval
        self.capacity = capacity
        self.max_agents = max_agents
        self.clock: Clock = clock or getattr(bus, "clock", None) or SYSTEM_CLOCK
        self._agents: OrderedDict[str, _Agent] = OrderedDict()
        self._last: float | None = None
        self._bounds: tuple[float, ...] = ()
        self._task: asyncio.Task[None] | None = None

    # -- the rings ------------------------------------------------------------------------

    def record(
        self,
        now: float,
        counts: Mapping[str, Mapping[str, int]],
        depths: Mapping[str, int],
        durations: Mapping[str, Sequence[float]] | None = None,
        bounds: Sequence[float] = (),
    ) -> None:
        """Add one sample per agent: ``counts`` are the cumulative counters per agent
        (``published``, ``acked``, ``dead_lettered``), ``depths`` the queue depths,
        ``durations`` the cumulative per-bucket handler-duration counts over ``bounds``."""
        dt = now - self._last if self._last is not None else 0.0
        self._last = now
        durations = durations or {}
        for name in counts.keys() | depths.keys():
            if name.startswith("_"):
                continue
            c = counts.get(name, {})
            cum = (c.get("published", 0), c.get("acked", 0), c.get("dead_lettered", 0))
            buckets = tuple(durations.get(name, ()))
            agent = self._agents.get(name)
            if agent is None:
                agent = self._agents[name] = _Agent(deque(maxlen=self.capacity), cum, buckets)
                self._evict()
            delta = [b - a for a, b in zip(agent.counts, cum, strict=True)]
            rates = [d / dt if dt > 0 and d > 0 else 0.0 for d in delta]
            p50 = p95 = None
            if buckets:
                per_bucket = _delta(agent.buckets, buckets)
                p50 = quantile(bounds, per_bucket, 0.5)
                p95 = quantile(bounds, per_bucket, 0.95)
            depth = int(depths.get(name, 0))
            agent.ring.append(
                Sample(
                    now,
                    rates[0],
                    rates[1],
                    rates[2],
                    depth,
                    None if p50 is None else round(p50 * 1000.0, 3),
                    None if p95 is None else round(p95 * 1000.0, 3),
                )
            )
            if any(delta) or depth:
                self._agents.move_to_end(name)
            agent.counts = cum
            agent.buckets = buckets

    def _evict(self) -> None:
        while len(self._agents) > self.max_agents:
            self._agents.popitem(last=False)

    def samples(self, agent: str) -> list[Sample]:
        """The agent's samples, oldest first."""
        found = self._agents.get(agent)
        return list(found.ring) if found is not None else []

    @property
    def size(self) -> int:
        """Samples held, over every agent."""
        return sum(len(a.ring) for a in self._agents.values())

    @property
    def agents(self) -> list[str]:
        """The agents held."""
        return sorted(self._agents)

    # -- reading the bus ----------------------------------------------------------------------

    def _durations(self) -> tuple[dict[str, list[float]], tuple[float, ...]]:
        tel = self.telemetry
        if tel is None or not tel.metrics_enabled:
            return {}, ()
        per_agent: dict[str, dict[float, float]] = {}
        for family in tel.registry.collect():
            if family.name != _DURATION:
                continue
            for s in family.samples:
                if not s.name.endswith("_bucket"):
                    continue
                le = float(s.labels.get("le", "inf"))
                row = per_agent.setdefault(s.labels.get("agent", ""), {})
                row[le] = row.get(le, 0.0) + s.value
        bounds = tuple(sorted({b for row in per_agent.values() for b in row}))
        finite = tuple(b for b in bounds if b != float("inf"))
        out: dict[str, list[float]] = {}
        for agent, row in per_agent.items():
            cumulative = [row.get(b, 0.0) for b in bounds]
            out[agent] = [c - (cumulative[i - 1] if i else 0.0) for i, c in enumerate(cumulative)]
        return out, finite

    async def tick(self) -> None:
        """Take one sample of every agent now."""
        tel = self.telemetry
        counts = tel.counts() if tel is not None and tel.metrics_enabled else {}
        depths: dict[str, int] = {}
        if tel is not None:
            depths = {q: d for q, (d, _dl) in (await tel.sample(self.bus)).items()}
        else:
            for q in await self.bus.queues():
                depths[q] = int(await self.bus.queue_depth(q))
        durations, bounds = self._durations()
        self.record(self.clock.now(), counts, depths, durations, bounds)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sampling the bus failed")
            await self.clock.sleep(self.interval)

    def start(self) -> None:
        """Start sampling (a task owned by this sampler)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop sampling: cancel the task and wait for it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # -- the route ----------------------------------------------------------------------------

    def snapshot(self, agent: str | None = None) -> dict[str, Any]:
        """The rings as JSON-ready data (one agent's, or all)."""
        names = [agent] if agent is not None else self.agents
        return {
            "interval": self.interval,
            "capacity": self.capacity,
            "agents": {n: [asdict(s) for s in self.samples(n)] for n in names if n in self._agents},
        }

    async def series(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/series[?agent=A]``."""
        return web.json_response(self.snapshot(request.query.get("agent") or None))


def _delta(before: Sequence[float], after: Sequence[float]) -> list[float]:
    if len(before) != len(after):
        return [max(0.0, a) for a in after]
    return [max(0.0, a - b) for b, a in zip(before, after, strict=True)]
