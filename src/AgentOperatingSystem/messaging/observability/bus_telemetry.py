"""BusTelemetry: the bus's telemetry hooks, and the contexts they return.

The bus calls :meth:`BusTelemetry.on_publish` around a publish and
:meth:`BusTelemetry.on_handle` around a handler call, and :meth:`BusTelemetry.on_settle` on
each settlement. Each hook takes one of two paths:

* **per message** (spans wanted and a tracer provider installed, or listeners added): a
  :class:`_PublishScope` or :class:`_HandleScope` opens a span (:mod:`.tracing`), counts
  into the series (:mod:`.series`) and tells the listeners;
* **metrics only**: the hook returns a context the series keeps for reuse, or the bus
  skips the per-message hooks and uses the batched calls (:meth:`BusTelemetry.count_publish`,
  :meth:`BusTelemetry.record_batch`, :meth:`BusTelemetry.count_error`).

Whether a tracer provider was installed since is looked up at most once a second. The
counters are exposed as Prometheus families through a collector of the registry
(:mod:`.metrics`); :func:`~.http.install_metrics` serves them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from bisect import bisect_left
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from time import monotonic, perf_counter
from typing import Any, Callable, Iterable

from opentelemetry import trace

from ..clock import SYSTEM_CLOCK, Clock
from ..types import Message
from .metrics import Histogram, MetricFamily, MetricsRegistry, metrics
from .series import (
    COUNT_NAMES,
    CountPublishMany,
    Series,
    Timer,
    agent_label,
    families,
)
from .tracing import end_span, start_handle_span, start_publish_span

__all__ = ["OUTCOMES", "BusTelemetry", "MetricsOn", "TelemetryListener", "telemetry_for"]

log = logging.getLogger("aos.messaging.observability")

OUTCOMES = ("delivered", "acked", "nacked", "dead_lettered", "expired")
"""The ``outcome`` values of :meth:`BusTelemetry.on_settle`."""

TelemetryListener = Callable[[dict[str, Any]], None]
"""Receives every bus event as a JSON-able dict (see :meth:`BusTelemetry.add_listener`)."""

_INSTRUMENTATION = "AgentOperatingSystem.messaging"
_RECHECK_SECONDS = 1.0
_PREVIEW = 300

_NULL_SCOPE = nullcontext()


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
        self._series: dict[tuple[str, str], Series] = {}
        self._by_label: dict[tuple[str, str], Series] = {}
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

    def _new_series(self, queue: str, message_type: str) -> Series:
        label = (agent_label(queue), message_type)
        series = self._by_label.get(label)
        if series is None:
            series = self._by_label[label] = Series(label[0], message_type, self._bounds)
        self._series[(queue, message_type)] = series
        if not queue.startswith("_"):
            self._queues.add(queue)
        return series

    def series_value(self, agent: str, message_type: str, what: str) -> int:
        """A counter of one (agent, type): ``published``, ``delivered``, ``acked``, ...

        (0 when nothing was counted.)"""
        self._fold()
        series = self._by_label.get((agent, message_type))
        if series is None or what not in Series.__slots__:
            return 0
        if what == "delivered":
            return series.handed_out
        value = getattr(series, what)
        if isinstance(value, Histogram):
            return value.count
        return value if isinstance(value, int) else 0

    def counts(self) -> dict[str, dict[str, int]]:
        """Per agent label, the counters summed over message types: ``published``,
        ``delivered``, ``acked``, ``nacked``, ``dead_lettered``, ``expired``, ``errors``."""
        self._fold()
        out: dict[str, dict[str, int]] = {}
        for (agent, mt), _ in sorted(self._by_label.items()):
            row = out.setdefault(agent, dict.fromkeys(COUNT_NAMES, 0))
            for what in COUNT_NAMES:
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
        return CountPublishMany([get((q, mt)) or self._new_series(q, mt) for q in queues])

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
        return Timer(series, perf_counter())

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
        return families(self._by_label.values(), self._depths)

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
        tracer = self._tel._active_tracer()
        if tracer is not None:
            self._start(tracer)
        return self

    def _start(self, tracer: trace.Tracer) -> None:
        self._span = start_publish_span(tracer, self._message, self._queues, agent_label)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        tel = self._tel
        if self._span is not None:
            end_span(self._span, exc)
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


@dataclass(slots=True, eq=False, repr=False)
class _HandleScope:
    """The context :meth:`BusTelemetry.on_handle` returns."""

    _tel: BusTelemetry
    _agent: str
    _message: Message
    _attempt: int
    _enqueued: float
    _span: trace.Span | None = field(default=None, init=False)
    _token: object | None = field(default=None, init=False)
    _series: Series | None = field(default=None, init=False)
    _t0: float = field(default=0.0, init=False)

    def __enter__(self) -> _HandleScope:
        tel = self._tel
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
        self._span, self._token = start_handle_span(
            tracer, self._message, self._agent, self._attempt, agent_label
        )

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        tel = self._tel
        duration = perf_counter() - self._t0
        if self._span is not None:
            end_span(self._span, exc, self._token)
            self._token = None
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


class MetricsOn:
    """A config view with metrics forced on and tracing as the bus's config says."""

    def __init__(self, config: Any) -> None:
        self.enable_tracing = bool(getattr(config, "enable_tracing", False))
        self.enable_metrics = True


def telemetry_for(bus: Any) -> BusTelemetry | None:
    """``bus.telemetry``; a bus without one first gets one with metrics on (tracing as its
    config says). ``None`` when the bus's telemetry is not a :class:`BusTelemetry`."""
    tel = getattr(bus, "telemetry", None)
    if tel is None:
        cfg = getattr(bus, "config", None)
        tel = BusTelemetry(MetricsOn(cfg), clock=getattr(bus, "clock", None) or SYSTEM_CLOCK)
        bus.telemetry = tel
    return tel if isinstance(tel, BusTelemetry) else None
