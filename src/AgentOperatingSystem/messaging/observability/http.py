"""``GET /metrics`` for an aiohttp application: the Prometheus page of a bus.

:func:`install_metrics` adds the route; at each scrape it samples the queue depths from the
bus's engine and renders the bus's telemetry with the application-wide registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bus_telemetry import telemetry_for
from .metrics import PROMETHEUS_CONTENT_TYPE, MetricsRegistry, metrics

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["install_metrics"]


def install_metrics(
    app: web.Application,
    bus: Any,
    *,
    path: str = "/metrics",
    registry: MetricsRegistry | None = None,
) -> None:
    """Add ``GET <path>`` (Prometheus text format) to an aiohttp application.

    The page shows ``bus.telemetry``'s metrics (queue depths are sampled from the engine at
    each scrape) and the application-wide :data:`metrics` (or ``registry``). A bus started
    without ``enable_metrics`` shows only the latter; a bus with no telemetry at all gets one
    with metrics on (tracing follows its config).
    """
    from aiohttp import web

    telemetry_for(bus)

    async def handle(request: web.Request) -> web.Response:
        tel = telemetry_for(bus)
        extra = registry if registry is not None else metrics
        if tel is not None:
            if tel.metrics_enabled and getattr(bus, "started", True):
                await tel.sample(bus)
            body = tel.registry.render(extra=extra.collect() if extra is not tel.registry else [])
        else:
            body = extra.render()
        return web.Response(
            body=body.encode("utf-8"),
            headers={"Content-Type": PROMETHEUS_CONTENT_TYPE},
        )

    app.router.add_get(path, handle)
