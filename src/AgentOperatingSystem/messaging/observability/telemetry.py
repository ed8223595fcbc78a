"""Observability for the bus: OpenTelemetry traces, metrics, and Prometheus exposition.

Turn it on with ``MessageBusConfig(enable_tracing=True)`` and/or ``enable_metrics=True``: the
bus then creates a :class:`BusTelemetry` at ``start()`` (or pass one as ``telemetry=``). When
both are off, ``bus.telemetry`` is ``None`` and the bus pays one attribute check per message.

**Traces.** A publish is a ``PRODUCER`` span (``publish <queue>``); a handler call is a
``CONSUMER`` span (``process <agent>``) whose parent is the publisher's span, so a request,
its handling and its response are one trace, across processes and hosts. The link is W3C trace
context (``traceparent``/``tracestate``) carried in the message metadata under the keys
``aos.traceparent``/``aos.tracestate``; it is written before the message is encoded, so it
travels over every engine and over HTTP between nodes. A publish's parent is the current span,
or, when there is none (a node republishing a message that came over the network), the trace
context the message already carries; a message that is already signed keeps its trace context
(rewriting it would break the signature). A node that sends a message over HTTP should open
the publish context around the request (``with bus.telemetry.on_publish(msg, [agent]):``) so
the hop gets a span and the message its context; :func:`http_trace_headers` gives the W3C
headers for the request itself. Attributes are strings: ``messaging.system="aos"``,
``messaging.destination.name``, ``messaging.message.id``, ``aos.message_type``,
``aos.sender_id``, ``aos.recipient_id``, ``aos.attempt``. Spans go to the tracer provider you
give (``BusTelemetry(config, tracer_provider=...)``), else to the global one
(``opentelemetry.trace.set_tracer_provider``); as long as no SDK provider is installed,
no span is even created, so ``enable_tracing=True`` without an exporter costs next to nothing.

**Metrics.** Per agent (queue) and message type: messages published, delivered, acked,
nacked, dead-lettered and expired (counters), handler errors, the delivery latency (time from
enqueue to handler start) and handler duration (histograms, seconds), and queue and
dead-letter depths (gauges sampled from the engine when scraped, see :meth:`BusTelemetry.sample`).
The bus counts them in plain per-series counters (no lock on the hot path) and exposes them
through a collector of a :class:`MetricsRegistry`, which is built on ``prometheus_client``
and renders its text format (:meth:`MetricsRegistry.render`); :func:`install_metrics` adds
``GET /metrics`` to an aiohttp
application. The registry also has the statsd-like calls of spec section 9.1
(``metrics.increment``, ``metrics.gauge``, ``metrics.timing``); the module-level
:data:`metrics` registry is the one applications use for their own metrics, and ``/metrics``
shows it beside the bus's.

Reply queues (``_reply.<bus id>``) and event-stream queues (``_stream.<...>``) are reported
under the agent labels ``_reply`` and ``_stream`` so the number of series stays bounded.

This module is the package's front: it re-exports the public names of the modules that do
the work, one concept each:

* :mod:`.metrics`: the registry (on ``prometheus_client``), the series' bucket counts;
* :mod:`.tracing`: W3C trace context in the metadata, and the spans of publish and handle;
* :mod:`.series`: the bus's counters per (agent, message type) and their families;
* :mod:`.bus_telemetry`: :class:`BusTelemetry`, the hooks the bus calls;
* :mod:`.http`: :func:`install_metrics`, the ``/metrics`` page for aiohttp.
"""

from __future__ import annotations

from .bus_telemetry import OUTCOMES, BusTelemetry, TelemetryListener, telemetry_for
from .bus_telemetry import MetricsOn as _MetricsOn
from .http import install_metrics
from .metrics import (
    DEFAULT_BUCKETS,
    PROMETHEUS_CONTENT_TYPE,
    MetricFamily,
    MetricsRegistry,
    Sample,
    metrics,
)
from .tracing import (
    TRACEPARENT_KEY,
    TRACESTATE_KEY,
    extract_trace_context,
    http_trace_headers,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "OUTCOMES",
    "PROMETHEUS_CONTENT_TYPE",
    "TRACEPARENT_KEY",
    "TRACESTATE_KEY",
    "BusTelemetry",
    "MetricFamily",
    "MetricsRegistry",
    "Sample",
    "TelemetryListener",
    "_MetricsOn",  # the old name of MetricsOn (the dashboard now calls telemetry_for)
    "extract_trace_context",
    "http_trace_headers",
    "install_metrics",
    "metrics",
    "telemetry_for",
]
