"""Observability overhead, each figure beside the same run with telemetry off.

* memory publish->handler->ack throughput with ``enable_tracing`` and ``enable_metrics`` on
  but no exporter (no OpenTelemetry SDK installed as the global provider: the configuration
  most deployments run with until they point an exporter somewhere) vs the same with both
  off; target: >= 90 %;
* the same with an SDK tracer provider recording every span into an in-memory exporter
  (a figure for the record: the price of full tracing; no target);

Runs alternate between the two settings and each setting keeps its best run, so a noisy
neighbour on a shared machine does not decide the ratio.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.observability.telemetry import BusTelemetry
from AgentOperatingSystem.messaging.types import MessageType
from benchmarks.common import countdown, result, task_messages

_messages = task_messages


async def _throughput(n: int, *, enabled: bool, telemetry: Any = None) -> float:
    msgs = _messages(n)
    handler, done = countdown(n)

    cfg = MessageBusConfig(
        broker_url="memory://",
        max_queue_size=n + 1,
        prefetch=256,
        enable_tracing=enabled,
        enable_metrics=enabled,
    )
    gc.collect()
    async with MessageBus(cfg, telemetry=telemetry) as bus:
        await bus.subscribe("sink", [MessageType.TASK], handler)
        start = time.perf_counter()
        for m in msgs:
            await bus.publish(m)
        await done.wait()
        elapsed = time.perf_counter() - start
        if enabled and bus.telemetry is not None:
            tel = bus.telemetry
            assert isinstance(tel, BusTelemetry)
            assert tel.series_value("sink", "task", "acked") == n, "metrics did not count"
    return n / elapsed


async def _overhead(n: int, rounds: int) -> tuple[float, float]:
    on: list[float] = []
    off: list[float] = []
    await _throughput(min(n, 2000), enabled=True)  # warm-up (imports, caches)
    for i in range(rounds):
        if i % 2:
            on.append(await _throughput(n, enabled=True))
            off.append(await _throughput(n, enabled=False))
        else:
            off.append(await _throughput(n, enabled=False))
            on.append(await _throughput(n, enabled=True))
    return max(on), max(off)


async def _sdk_tracing(n: int, rounds: int) -> tuple[float, float, int]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced: list[float] = []
    off: list[float] = []
    for _ in range(rounds):
        exporter.clear()
        tel = BusTelemetry(
            MessageBusConfig(enable_tracing=True, enable_metrics=True), tracer_provider=provider
        )
        traced.append(await _throughput(n, enabled=True, telemetry=tel))
        off.append(await _throughput(n, enabled=False))
    spans = len(exporter.get_finished_spans())
    provider.shutdown()
    return max(traced), max(off), spans


async def run(quick: bool) -> list[dict[str, Any]]:
    """Measure and return the rows."""
    n, rounds = (5_000, 5) if quick else (20_000, 7)
    on, off = await _overhead(n, rounds)
    rows = [
        result(
            "observability: memory throughput, tracing+metrics on, no exporter",
            on,
            "msg/s",
            "same run, telemetry off",
            off,
            higher_is_better=True,
            target=0.9,
        )
    ]
    traced, base, spans = await _sdk_tracing(n // 2, 3 if quick else 5)
    assert spans >= n, f"expected a span per publish and per handler call, got {spans}"
    rows.append(
        result(
            "observability: memory throughput, every span recorded (SDK, in-memory exporter)",
            traced,
            "msg/s",
            "same run, telemetry off",
            base,
            higher_is_better=True,
        )
    )
    return rows
