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
:class:`MetricsRegistry` holds them and renders the Prometheus text format
(:meth:`MetricsRegistry.render`); :func:`install_metrics` adds ``GET /metrics`` to an aiohttp
application. The registry also has the statsd-like calls of spec section 9.1
(``metrics.increment``, ``metrics.gauge``, ``metrics.timing``); the module-level
:data:`metrics` registry is the one applications use for their own metrics, and ``/metrics``
shows it beside the bus's.

Reply queues (``_reply.<bus id>``) and event-stream queues (``_stream.<...>``) are reported
under the agent labels ``_reply`` and ``_stream`` so the number of series stays bounded.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from bisect import bisect_left
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError
from ..types import Message

if TYPE_CHECKING:
    from aiohttp import web

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
    "extract_trace_context",
    "http_trace_headers",
    "install_metrics",
    "metrics",
]

log = logging.getLogger("aos.messaging.observability")

TRACEPARENT_KEY = "aos.traceparent"
"""Metadata key of the W3C ``traceparent`` a message carries."""
TRACESTATE_KEY = "aos.tracestate"
"""Metadata key of the W3C ``tracestate`` a message carries."""
_PREFIX = "aos."
_SIGNATURE_KEY = "aos.signature"

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of the Prometheus text exposition format."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Histogram bucket upper bounds in seconds (``+Inf`` is implied)."""

OUTCOMES = ("delivered", "acked", "nacked", "dead_lettered", "expired")
"""The ``outcome`` values of :meth:`BusTelemetry.on_settle`."""

TelemetryListener = Callable[[dict[str, Any]], None]
"""Receives every bus event as a JSON-able dict (see :meth:`BusTelemetry.add_listener`)."""

_INSTRUMENTATION = "AgentOperatingSystem.messaging"
_RECHECK_SECONDS = 1.0
_PREVIEW = 300


# ---------------------------------------------------------------------------- registry

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationError("a metric name must be a non-empty string")
    out = _NAME_BAD.sub("_", name)
    return "_" + out if out[0].isdigit() else out


def _label_name(name: str) -> str:
    out = _LABEL_BAD.sub("_", str(name))
    if not out or out[0].isdigit():
        out = "_" + out
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


LabelKey = tuple[tuple[str, str], ...]


def _key(labels: Mapping[str, Any] | None) -> LabelKey:
    if not labels:
        return ()
    return tuple(sorted((_label_name(k), str(v)) for k, v in labels.items()))


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of the exposition: ``name{labels} value``."""

    name: str
    labels: LabelKey
    value: float


@dataclass(slots=True)
class MetricFamily:
    """A metric with its ``# HELP``/``# TYPE`` lines and its samples."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[Sample] = field(default_factory=list)

    def render(self) -> str:
        """The family in the Prometheus text format."""
        lines = [
            f"# HELP {self.name} {self.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}",
            f"# TYPE {self.name} {self.kind}",
        ]
        for s in self.samples:
            if s.labels:
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
                lines.append(f"{s.name}{{{inner}}} {_number(s.value)}")
            else:
                lines.append(f"{s.name} {_number(s.value)}")
        return "\n".join(lines) + "\n"


class _Histogram:
    """Bucket counts (non-cumulative; the last slot is +Inf) and the sum of observations."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def samples(self, name: str, labels: LabelKey) -> list[Sample]:
        out: list[Sample] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append(Sample(f"{name}_bucket", (*labels, ("le", _number(bound))), running))
        total = running + self.counts[-1]
        out.append(Sample(f"{name}_bucket", (*labels, ("le", "+Inf")), total))
        out.append(Sample(f"{name}_sum", labels, self.sum))
        out.append(Sample(f"{name}_count", labels, total))
        return out


@dataclass(slots=True)
class _Family:
    kind: str
    help: str
    values: dict[LabelKey, float] = field(default_factory=dict)
    histograms: dict[LabelKey, _Histogram] = field(default_factory=dict)


Collector = Callable[[], Iterable[MetricFamily]]
"""Returns metric families at scrape time (see :meth:`MetricsRegistry.add_collector`)."""


class MetricsRegistry:
    """Counters, gauges and histograms, rendered in the Prometheus text format.

    The calls are those of spec section 9.1, with optional labels::

        metrics.gauge("message_bus.queue_depth", queue_size, labels={"agent": "cfo_agent"})
        metrics.increment("message_bus.messages_published")
        metrics.timing("message_bus.delivery_latency", latency_ms)

    Dots in names become underscores; a counter is exposed with the suffix ``_total`` and a
    timing as a histogram in seconds with the suffix ``_seconds``. A name keeps the kind it was
    first used with (``ConfigurationError`` otherwise).
    """

    def __init__(self, *, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        if not bounds or any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise ConfigurationError("buckets must be finite numbers")
        self.buckets = bounds
        self._families: dict[str, _Family] = {}
        self._collectors: list[Collector] = []

    def _family(self, name: str, kind: str, help: str | None) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            fam = _Family(kind, help or name.replace("_", " "))
            self._families[name] = fam
        elif fam.kind != kind:
            raise ConfigurationError(f"metric {name!r} is a {fam.kind}, not a {kind}")
        elif help:
            fam.help = help
        return fam

    def increment(
        self,
        name: str,
        value: float = 1.0,
        labels: Mapping[str, Any] | None = None,
        *,
        help: str | None = None,
    ) -> None:
        """Add ``value`` (>= 0) to the counter ``name``."""
        if value < 0:
            raise ConfigurationError("a counter can only go up")
        metric = _metric_name(name)
        if not metric.endswith("_total"):
            metric += "_total"
        fam = self._family(metric, "counter", help)
        key = _key(labels)
        fam.values[key] = fam.values.get(key, 0.0) + value

    def gauge(
        self,
        name: str,
        value: float,
        labels: Mapping[str, Any] | None = None,
        *,
        help: str | None = None,
    ) -> None:
        """Set the gauge ``name`` to ``value``."""
        fam = self._family(_metric_name(name), "gauge", help)
        fam.values[_key(labels)] = float(value)

    def observe(
        self,
        name: str,
        value: float,
        labels: Mapping[str, Any] | None = None,
        *,
        help: str | None = None,
    ) -> None:
        """Record ``value`` in the histogram ``name``."""
        fam = self._family(_metric_name(name), "histogram", help)
        key = _key(labels)
        hist = fam.histograms.get(key)
        if hist is None:
            hist = fam.histograms[key] = _Histogram(self.buckets)
        hist.observe(float(value))

    def timing(
        self,
        name: str,
        milliseconds: float,
        labels: Mapping[str, Any] | None = None,
        *,
        help: str | None = None,
    ) -> None:
        """Record a duration given in milliseconds (exposed in seconds as ``<name>_seconds``)."""
        metric = _metric_name(name)
        if not metric.endswith("_seconds"):
            metric += "_seconds"
        self.observe(metric, milliseconds / 1000.0, labels, help=help)

    def value(self, name: str, labels: Mapping[str, Any] | None = None) -> float | None:
        """The current value of a counter or gauge sample (the exposed name), or None.

        For a histogram, the number of observations."""
        for fam in self.collect():
            if fam.name == name or (fam.kind == "counter" and fam.name == name + "_total"):
                want = _key(labels)
                target = fam.name + "_count" if fam.kind == "histogram" else fam.name
                for s in fam.samples:
                    if s.name == target and s.labels == want:
                        return s.value
        return None

    def add_collector(self, collector: Collector) -> None:
        """Call ``collector()`` at every scrape; its families are rendered too."""
        self._collectors.append(collector)

    def remove_collector(self, collector: Collector) -> None:
        """Stop calling ``collector``."""
        if collector in self._collectors:
            self._collectors.remove(collector)

    def collect(self) -> list[MetricFamily]:
        """Every family: the registry's own, then the collectors'."""
        out: list[MetricFamily] = []
        for name, fam in sorted(self._families.items()):
            mf = MetricFamily(name, fam.kind, fam.help)
            if fam.kind == "histogram":
                for key, hist in sorted(fam.histograms.items()):
                    mf.samples.extend(hist.samples(name, key))
            else:
                mf.samples.extend(Sample(name, k, v) for k, v in sorted(fam.values.items()))
            out.append(mf)
        for collector in list(self._collectors):
            out.extend(collector())
        return out

    def render(self, *, extra: Iterable[MetricFamily] = ()) -> str:
        """The Prometheus text exposition (version 0.0.4) of every family.

        A family whose name was already rendered (e.g. from another registry in ``extra``)
        is skipped, so the output never repeats a name."""
        seen: set[str] = set()
        parts: list[str] = []
        for fam in [*self.collect(), *extra]:
            if fam.name in seen:
                continue
            seen.add(fam.name)
            parts.append(fam.render())
        return "".join(parts)


metrics = MetricsRegistry()
"""The application-wide registry (spec section 9.1); ``/metrics`` exposes it too."""


# ---------------------------------------------------------------------------- trace context


class _AosSetter(Setter[dict[str, Any]]):
    def set(self, carrier: dict[str, Any], key: str, value: str) -> None:
        carrier[_PREFIX + key] = value


class _AosGetter(Getter[Mapping[str, Any]]):
    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(_PREFIX + key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [k[len(_PREFIX) :] for k in carrier if k.startswith(_PREFIX)]


_SETTER = _AosSetter()
_GETTER = _AosGetter()


def extract_trace_context(message: Message) -> otel_context.Context | None:
    """The OpenTelemetry context carried by ``message`` (None when it carries none)."""
    if TRACEPARENT_KEY not in message.metadata:
        return None
    return propagate.extract(message.metadata, getter=_GETTER)


def http_trace_headers(message: Message) -> dict[str, str]:
    """The W3C ``traceparent``/``tracestate`` headers for sending ``message`` over HTTP."""
    out: dict[str, str] = {}
    for key in ("traceparent", "tracestate"):
        value = message.metadata.get(_PREFIX + key)
        if isinstance(value, str) and value:
            out[key] = value
    return out


# ---------------------------------------------------------------------------- telemetry


def _agent_label(queue: str) -> str:
    if queue.startswith("_reply."):
        return "_reply"
    if queue.startswith("_stream."):
        return "_stream"
    return queue


class _Series:
    """Everything counted for one (agent, message type)."""

    __slots__ = (
        "acked",
        "agent",
        "dead_lettered",
        "delivered",
        "duration",
        "errors",
        "expired",
        "handled",
        "latency",
        "message_type",
        "nacked",
        "on_publish",
        "published",
        "timer",
    )

    def __init__(self, agent: str, message_type: str, bounds: tuple[float, ...]) -> None:
        self.agent = agent
        self.message_type = message_type
        self.published = 0
        self.delivered = 0
        self.acked = 0
        self.nacked = 0
        self.dead_lettered = 0
        self.expired = 0
        self.errors = 0
        self.handled = 0
        self.latency = _Histogram(bounds)
        self.duration = _Histogram(bounds)
        self.on_publish = _CountPublish(self)
        self.timer = _Timer(self)

    @property
    def handed_out(self) -> int:
        """Deliveries: to handlers (``handled``) and to pullers (``delivered``)."""
        return self.delivered + self.handled


class _CountPublish:
    """A reusable publish context of one series: counts the publish when it succeeds."""

    __slots__ = ("series",)

    def __init__(self, series: _Series) -> None:
        self.series = series

    def __enter__(self) -> _CountPublish:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.series.published += 1


class _CountPublishMany:
    """The publish context of a fan-out when only metrics are recorded."""

    __slots__ = ("series",)

    def __init__(self, series: list[_Series]) -> None:
        self.series = series

    def __enter__(self) -> _CountPublishMany:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            for s in self.series:
                s.published += 1


class _Timer:
    """The handler context when only metrics are recorded: handler duration and errors.

    Each series keeps one for reuse (free while ``t0 < 0``); overlapping handler calls of
    the same series get their own."""

    __slots__ = ("series", "t0")

    def __init__(self, series: _Series, t0: float = -1.0) -> None:
        self.series = series
        self.t0 = t0

    def __enter__(self) -> _Timer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        elapsed = perf_counter() - self.t0
        self.t0 = -1.0
        series = self.series
        hist = series.duration
        hist.counts[bisect_left(hist.bounds, elapsed)] += 1
        hist.sum += elapsed
        if exc_type is not None:
            series.errors += 1


_NULL_SCOPE = nullcontext()


def _span_attributes(
    msg: Message, operation_type: str, operation: str, destination: str
) -> dict[str, str]:
    """The attributes every AOS span carries (all strings)."""
    attributes = {
        "messaging.system": "aos",
        "messaging.operation.type": operation_type,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
        "messaging.message.id": msg.message_id,
        "aos.message_type": msg.message_type.value,
        "aos.sender_id": msg.sender_id,
    }
    if msg.recipient_id is not None:
        attributes["aos.recipient_id"] = msg.recipient_id
    if msg.correlation_id is not None:
        attributes["messaging.message.conversation_id"] = msg.correlation_id
    return attributes


_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("published", "message_bus_messages_published_total", "Messages published, per queue."),
    ("handed_out", "message_bus_messages_delivered_total", "Messages handed to a consumer."),
    ("acked", "message_bus_messages_acked_total", "Messages settled as done."),
    ("nacked", "message_bus_messages_nacked_total", "Messages given back for redelivery."),
    (
        "dead_lettered",
        "message_bus_messages_dead_lettered_total",
        "Messages moved to the dead-letter queue.",
    ),
    ("expired", "message_bus_messages_expired_total", "Messages that expired before delivery."),
    ("errors", "message_bus_handler_errors_total", "Handler calls that raised."),
)


_COUNT_NAMES = ("published", "delivered", "acked", "nacked", "dead_lettered", "expired", "errors")


def _preview(content: Any) -> str:
    try:
        text = json.dumps(content, default=str, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(content)
    return text if len(text) <= _PREVIEW else text[: _PREVIEW - 3] + "..."


class BusTelemetry:
    """The bus's :class:`~.hooks.TelemetryHooks`: OpenTelemetry spans and metrics.

    ``config`` is the bus's :class:`~AgentOperatingSystem.config.messagebus.MessageBusConfig`
    (its ``enable_tracing``/``enable_metrics`` choose what is recorded; without a config both
    are on). ``tracer_provider`` (default: the global one) receives the spans; ``registry``
    (default: a new one per bus) holds the metrics; ``clock`` measures delivery latency
    against the engine's enqueue time (the bus passes its own).
    """

    def __init__(
        self,
        config: Any = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        registry: MetricsRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.tracing_enabled = bool(getattr(config, "enable_tracing", True))
        self.metrics_enabled = bool(getattr(config, "enable_metrics", True))
        self.registry = registry if registry is not None else MetricsRegistry()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._now: Callable[[], float] = time.time if self.clock is SYSTEM_CLOCK else self.clock.now
        self._provider = tracer_provider
        self._tracer: trace.Tracer | None = None
        self._live = False
        # When to look for a global tracer provider again (inf: never, tracing is off or live).
        self._next_check = 0.0 if self.tracing_enabled else math.inf
        if tracer_provider is not None and self.tracing_enabled:
            self._tracer = tracer_provider.get_tracer(_INSTRUMENTATION)
            self._live = True
            self._next_check = math.inf
        self._bounds = self.registry.buckets
        self._series: dict[tuple[str, str], _Series] = {}
        self._by_label: dict[tuple[str, str], _Series] = {}
        self._queues: set[str] = set()
        self._depths: dict[str, tuple[int, int]] = {}
        self._listeners: list[TelemetryListener] = []
        # True when a hook must take the full path (spans or listeners).
        self._slow = self._live
        #: True when the bus must call the per-message hooks (spans or listeners); kept in
        #: step with ``_slow`` so the bus reads a plain attribute on its hot path.
        self.per_message = self._slow
        #: Publishes counted inline by the bus on the batched path: (queue, type) -> count,
        #: folded into the series whenever the metrics are read.
        self.published_counts: dict[tuple[str, str], int] = {}
        self.registry.add_collector(self._collect)

    # -- tracing -----------------------------------------------------------------------

    def _active_tracer(self) -> trace.Tracer | None:
        """The tracer when spans are wanted and someone records them, else None."""
        if not self.tracing_enabled:
            return None
        if self._live:
            return self._tracer
        now = monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + _RECHECK_SECONDS
        provider = trace.get_tracer_provider()
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None
        self._tracer = provider.get_tracer(_INSTRUMENTATION)
        self._live = self._slow = self.per_message = True
        self._next_check = math.inf
        return self._tracer

    @property
    def tracing_active(self) -> bool:
        """True when spans are being created (tracing on and a real provider installed)."""
        return self._active_tracer() is not None

    # -- series ------------------------------------------------------------------------

    def _new_series(self, queue: str, message_type: str) -> _Series:
        label = (_agent_label(queue), message_type)
        series = self._by_label.get(label)
        if series is None:
            series = self._by_label[label] = _Series(label[0], message_type, self._bounds)
        self._series[(queue, message_type)] = series
        if not queue.startswith("_"):
            self._queues.add(queue)
        return series

    def series_value(self, agent: str, message_type: str, what: str) -> int:
        """A counter of one (agent, type): ``published``, ``delivered``, ``acked``, ...

        (0 when nothing was counted.)"""
        self._fold()
        series = self._by_label.get((agent, message_type))
        if series is None or what not in _Series.__slots__:
            return 0
        if what == "delivered":
            return series.handed_out
        value = getattr(series, what)
        if isinstance(value, _Histogram):
            return value.count
        return value if isinstance(value, int) else 0

    def counts(self) -> dict[str, dict[str, int]]:
        """Per agent label, the counters summed over message types: ``published``,
        ``delivered``, ``acked``, ``nacked``, ``dead_lettered``, ``expired``, ``errors``."""
        self._fold()
        out: dict[str, dict[str, int]] = {}
        for (agent, mt), _ in sorted(self._by_label.items()):
            row = out.setdefault(agent, dict.fromkeys(_COUNT_NAMES, 0))
            for what in _COUNT_NAMES:
                row[what] += self.series_value(agent, mt, what)
        return out

    # -- hooks -------------------------------------------------------------------------

    def on_publish(self, message: Message, queues: list[str]) -> AbstractContextManager[Any]:
        """A context around one publish: a PRODUCER span that writes the trace context into
        the message metadata; on success the ``published`` counters move."""
        if self._slow or monotonic() >= self._next_check:
            return _PublishScope(self, message, queues)
        if not self.metrics_enabled:
            return _NULL_SCOPE
        mt = message.message_type._value_
        get = self._series.get
        if len(queues) == 1:
            q = queues[0]
            return (get((q, mt)) or self._new_series(q, mt)).on_publish
        return _CountPublishMany([get((q, mt)) or self._new_series(q, mt) for q in queues])

    def on_handle(
        self, agent_id: str, message: Message, attempt: int, enqueued_at: float
    ) -> AbstractContextManager[Any]:
        """A context around one handler call: a CONSUMER span (child of the publisher's),
        the ``delivered`` counter, delivery latency and handler duration."""
        if self._slow or monotonic() >= self._next_check:
            return _HandleScope(self, agent_id, message, attempt, enqueued_at)
        if not self.metrics_enabled:
            return _NULL_SCOPE
        mt = message.message_type._value_
        series = self._series.get((agent_id, mt)) or self._new_series(agent_id, mt)
        latency = self._now() - enqueued_at
        if latency < 0.0:
            latency = 0.0
        series.handled += 1
        hist = series.latency
        hist.counts[bisect_left(hist.bounds, latency)] += 1
        hist.sum += latency
        timer = series.timer
        if timer.t0 < 0.0:
            timer.t0 = perf_counter()
            return timer
        return _Timer(series, perf_counter())

    # -- batched path ---------------------------------------------------------------------
    #
    # With only metrics recorded (no spans, no live listeners) the bus does not call the
    # per-message hooks: it counts publishes with one call, counts a consumer batch's handled
    # and acked messages per type once per batch, and times one handler in
    # ``metrics_sample_every`` (delivery latency and handler duration histograms are sampled;
    # every counter is exact; ``MessageBusConfig.metrics_sample_every``).

    def count_publish(self, queue: str, message_type: str) -> None:
        """Count one successful publish to ``queue`` (batched path; the bus may instead add
        to :attr:`published_counts` itself)."""
        key = (queue, message_type)
        self.published_counts[key] = self.published_counts.get(key, 0) + 1

    def _fold(self) -> None:
        """Move the inline publish counts into their series."""
        if not self.published_counts:
            return
        counts, self.published_counts = self.published_counts, {}
        if not self.metrics_enabled:
            return
        for (queue, mt), n in counts.items():
            (self._series.get((queue, mt)) or self._new_series(queue, mt)).published += n

    def count_error(self, queue: str, message_type: str) -> None:
        """Count one handler call that raised (batched path)."""
        if self.metrics_enabled:
            series = self._series.get((queue, message_type)) or self._new_series(
                queue, message_type
            )
            series.handled += 1
            series.errors += 1

    def record_batch(
        self,
        queue: str,
        acked: dict[str, int],
        samples: list[tuple[str, float, float]],
    ) -> None:
        """A consumer batch on the batched path: per message type, how many were handled
        and acked; and ``(message_type, latency, duration)`` of the timed handlers."""
        if not self._slow and monotonic() >= self._next_check:
            self._active_tracer()  # a tracer provider installed since: per-message from now
        if not self.metrics_enabled:
            return
        get = self._series.get
        for mt, n in acked.items():
            series = get((queue, mt)) or self._new_series(queue, mt)
            series.handled += n
            series.acked += n
        for mt, latency, duration in samples:
            series = get((queue, mt)) or self._new_series(queue, mt)
            series.latency.observe(latency if latency > 0.0 else 0.0)
            series.duration.observe(duration)

    def on_settle(self, agent_id: str, message_type: str, outcome: str) -> None:
        """Count a settlement; ``outcome`` is one of :data:`OUTCOMES`."""
        if self.metrics_enabled:
            series = self._series.get((agent_id, message_type)) or self._new_series(
                agent_id, message_type
            )
            if outcome == "acked":
                series.acked += 1
            elif outcome == "nacked":
                series.nacked += 1
            elif outcome == "dead_lettered":
                series.dead_lettered += 1
            elif outcome == "expired":
                series.expired += 1
            elif outcome == "delivered":
                series.delivered += 1
            else:
                log.debug("unknown settle outcome %r", outcome)
        if self._listeners:
            self.emit(
                {
                    "event": outcome,
                    "agent": agent_id,
                    "message_type": message_type,
                }
            )

    # -- listeners ---------------------------------------------------------------------

    def add_listener(self, listener: TelemetryListener) -> None:
        """Call ``listener(event)`` for every publish, delivery, handler result and settlement.

        ``event["event"]`` is ``published``, ``handled`` (with ``ok``, ``error``,
        ``duration_ms``) or one of :data:`OUTCOMES`; listeners run inline on the bus's path,
        so they must be quick and must not raise (an exception is logged and ignored)."""
        self._listeners.append(listener)
        self._slow = self.per_message = True

    def remove_listener(self, listener: TelemetryListener) -> None:
        """Stop calling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)
        self._slow = self.per_message = self._live or bool(self._listeners)

    def emit(self, event: dict[str, Any]) -> None:
        """Give ``event`` (a timestamp is added) to every listener."""
        event.setdefault("time", time.time())
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("telemetry listener %r failed", listener)

    # -- scraping ----------------------------------------------------------------------

    def known_queues(self) -> set[str]:
        """Agent queues this bus has published to, delivered from or sampled."""
        self._fold()
        return set(self._queues) | set(self._depths)

    async def sample(self, bus: Any, queues: Iterable[str] = ()) -> dict[str, tuple[int, int]]:
        """Read the depth and dead-letter depth of every known queue from ``bus``'s engine
        (known: seen by this telemetry, held by the engine, subscribed, or in ``queues``),
        store them for the gauges and return them."""
        names = set(self._queues) | set(queues)
        try:
            names.update(await bus.queues())
        except Exception:
            log.exception("listing queues failed")
        subs = getattr(bus, "subscriptions", None)
        if isinstance(subs, dict):
            names.update(str(k) for k in subs)
        depths: dict[str, tuple[int, int]] = {}
        for name in sorted(n for n in names if not n.startswith("_")):
            try:
                depths[name] = (
                    int(await bus.queue_depth(name)),
                    int(await bus.dead_letter_depth(name)),
                )
            except Exception:
                log.exception("reading the depth of %s failed", name)
        self._depths = depths
        return depths

    def _collect(self) -> list[MetricFamily]:
        self._fold()
        if not self.metrics_enabled:
            return []
        series = sorted(self._by_label.values(), key=lambda s: (s.agent, s.message_type))
        out: list[MetricFamily] = []
        for attr, name, help_text in _COUNTERS:
            fam = MetricFamily(name, "counter", help_text)
            for s in series:
                labels = (("agent", s.agent), ("message_type", s.message_type))
                fam.samples.append(Sample(name, labels, getattr(s, attr)))
            out.append(fam)
        for attr, name, help_text in (
            (
                "latency",
                "message_bus_delivery_latency_seconds",
                "Time from enqueue to the start of the handler.",
            ),
            ("duration", "message_bus_handler_duration_seconds", "Handler run time."),
        ):
            fam = MetricFamily(name, "histogram", help_text)
            for s in series:
                hist: _Histogram = getattr(s, attr)
                if any(hist.counts):
                    labels = (("agent", s.agent), ("message_type", s.message_type))
                    fam.samples.extend(hist.samples(name, labels))
            out.append(fam)
        depth = MetricFamily(
            "message_bus_queue_depth", "gauge", "Messages waiting in or locked from the queue."
        )
        dead = MetricFamily(
            "message_bus_dead_letter_depth", "gauge", "Messages in the queue's dead-letter queue."
        )
        for queue, (d, dl) in sorted(self._depths.items()):
            depth.samples.append(Sample(depth.name, (("agent", queue),), d))
            dead.samples.append(Sample(dead.name, (("agent", queue),), dl))
        out.extend((depth, dead))
        return out

    def render(self) -> str:
        """This bus's metrics plus the application-wide :data:`metrics`, as Prometheus text."""
        extra = metrics.collect() if metrics is not self.registry else []
        return self.registry.render(extra=extra)


class _PublishScope:
    """The context :meth:`BusTelemetry.on_publish` returns."""

    __slots__ = ("_message", "_queues", "_span", "_tel")

    def __init__(self, tel: BusTelemetry, message: Message, queues: list[str]) -> None:
        self._tel = tel
        self._message = message
        self._queues = queues
        self._span: trace.Span | None = None

    def __enter__(self) -> _PublishScope:
        tel = self._tel
        if tel._live:
            self._start(tel._tracer)  # type: ignore[arg-type]
        elif monotonic() >= tel._next_check:
            tracer = tel._active_tracer()
            if tracer is not None:
                self._start(tracer)
        return self

    def _start(self, tracer: trace.Tracer) -> None:
        msg = self._message
        queues = self._queues
        parent: otel_context.Context | None = None
        if not trace.get_current_span().get_span_context().is_valid:
            parent = extract_trace_context(msg)
        dest = queues[0] if len(queues) == 1 else msg.message_type.value
        attributes = _span_attributes(msg, "send", "publish", dest)
        attributes["aos.priority"] = msg.priority.name
        attributes["aos.queues"] = ",".join(queues)
        span = tracer.start_span(
            f"publish {_agent_label(dest)}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        )
        self._span = span
        if _SIGNATURE_KEY not in msg.metadata:
            # A signed message (forwarded, republished) keeps the context it was signed with:
            # rewriting it would break the signature. Its spans still join the same trace.
            propagate.inject(msg.metadata, context=trace.set_span_in_context(span), setter=_SETTER)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        tel = self._tel
        span = self._span
        if span is not None:
            if exc is not None:
                span.record_exception(exc)
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            span.end()
        if exc_type is not None:
            return
        msg = self._message
        if tel.metrics_enabled:
            mt = msg.message_type._value_
            get = tel._series.get
            for q in self._queues:
                (get((q, mt)) or tel._new_series(q, mt)).published += 1
        if tel._listeners:
            tel.emit(
                {
                    "event": "published",
                    "message_id": msg.message_id,
                    "message_type": msg.message_type.value,
                    "sender": msg.sender_id,
                    "recipient": msg.recipient_id,
                    "queues": list(self._queues),
                    "priority": msg.priority.name,
                    "correlation_id": msg.correlation_id,
                    "content": _preview(msg.content),
                }
            )


class _HandleScope:
    """The context :meth:`BusTelemetry.on_handle` returns."""

    __slots__ = (
        "_agent",
        "_attempt",
        "_enqueued",
        "_message",
        "_series",
        "_span",
        "_t0",
        "_tel",
        "_token",
    )

    def __init__(
        self, tel: BusTelemetry, agent: str, message: Message, attempt: int, enqueued_at: float
    ) -> None:
        self._tel = tel
        self._agent = agent
        self._message = message
        self._attempt = attempt
        self._enqueued = enqueued_at
        self._span: trace.Span | None = None
        self._token: object | None = None
        self._series: _Series | None = None
        self._t0 = 0.0

    def __enter__(self) -> _HandleScope:
        tel = self._tel
        if tel._live:
            self._start(tel._tracer)  # type: ignore[arg-type]
        elif monotonic() >= tel._next_check:
            tracer = tel._active_tracer()
            if tracer is not None:
                self._start(tracer)
        if tel.metrics_enabled:
            mt = self._message.message_type._value_
            series = tel._series.get((self._agent, mt)) or tel._new_series(self._agent, mt)
            self._series = series
            latency = tel._now() - self._enqueued
            series.latency.observe(latency if latency > 0.0 else 0.0)
            series.handled += 1
        self._t0 = perf_counter()
        return self

    def _start(self, tracer: trace.Tracer) -> None:
        msg = self._message
        # The parent is the publisher's span, never whatever context the consumer task
        # happened to inherit; without trace context the handler starts a new trace.
        parent = extract_trace_context(msg) or otel_context.Context()
        attributes = _span_attributes(msg, "process", "process", self._agent)
        attributes["aos.attempt"] = str(self._attempt)
        span = tracer.start_span(
            f"process {_agent_label(self._agent)}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        tel = self._tel
        duration = perf_counter() - self._t0
        span = self._span
        if span is not None:
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]
                self._token = None
            if exc is not None:
                span.record_exception(exc)
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            span.end()
        series = self._series
        if series is not None:
            series.duration.observe(duration)
            if exc_type is not None:
                series.errors += 1
        if tel._listeners:
            msg = self._message
            tel.emit(
                {
                    "event": "handled",
                    "agent": self._agent,
                    "message_id": msg.message_id,
                    "message_type": msg.message_type.value,
                    "sender": msg.sender_id,
                    "attempt": self._attempt,
                    "ok": exc is None,
                    "error": None if exc is None else f"{type(exc).__name__}: {exc}"[:500],
                    "duration_ms": round(duration * 1000.0, 3),
                    "content": _preview(msg.content),
                }
            )


# ---------------------------------------------------------------------------- HTTP


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

    def telemetry() -> BusTelemetry | None:
        tel = getattr(bus, "telemetry", None)
        if tel is None:
            cfg = getattr(bus, "config", None)
            tel = BusTelemetry(_MetricsOn(cfg), clock=getattr(bus, "clock", None) or SYSTEM_CLOCK)
            bus.telemetry = tel
        return tel if isinstance(tel, BusTelemetry) else None

    telemetry()

    async def handle(request: web.Request) -> web.Response:
        tel = telemetry()
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


class _MetricsOn:
    """A config view with metrics forced on and tracing as the bus's config says."""

    def __init__(self, config: Any) -> None:
        self.enable_tracing = bool(getattr(config, "enable_tracing", False))
        self.enable_metrics = True
