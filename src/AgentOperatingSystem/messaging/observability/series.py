"""The bus's counters: one :class:`Series` per (agent label, message type).

A series holds the counters (published, delivered, acked, nacked, dead-lettered, expired,
handler errors, handled) and two histograms (delivery latency, handler duration). It also
owns the small reusable contexts the hooks return when only metrics are recorded (no spans,
no listeners): :class:`CountPublish`, :class:`CountPublishMany` and :class:`Timer`.
:func:`families` turns the series and the sampled queue depths into ``prometheus_client``
families.

Reply queues (``_reply.<bus id>``) and event-stream queues (``_stream.<...>``) are counted
under the agent labels ``_reply`` and ``_stream`` (:func:`agent_label`), so the number of
series stays bounded.
"""

from __future__ import annotations

from bisect import bisect_left
from time import perf_counter
from typing import Any, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .metrics import Histogram, MetricFamily

__all__ = [
    "COUNT_NAMES",
    "CountPublish",
    "CountPublishMany",
    "Series",
    "Timer",
    "agent_label",
    "families",
]


def agent_label(queue: str) -> str:
    """The agent label a queue is counted under (``_reply``/``_stream`` for those queues)."""
    if queue.startswith("_reply."):
        return "_reply"
    if queue.startswith("_stream."):
        return "_stream"
    return queue


class Series:
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
        self.latency = Histogram(bounds)
        self.duration = Histogram(bounds)
        self.on_publish = CountPublish(self)
        self.timer = Timer(self)

    @property
    def handed_out(self) -> int:
        """Deliveries: to handlers (``handled``) and to pullers (``delivered``)."""
        return self.delivered + self.handled


class CountPublish:
    """A reusable publish context of one series: counts the publish when it succeeds."""

    __slots__ = ("series",)

    def __init__(self, series: Series) -> None:
        self.series = series

    def __enter__(self) -> CountPublish:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.series.published += 1


class CountPublishMany:
    """The publish context of a fan-out when only metrics are recorded."""

    __slots__ = ("series",)

    def __init__(self, series: list[Series]) -> None:
        self.series = series

    def __enter__(self) -> CountPublishMany:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            for s in self.series:
                s.published += 1


class Timer:
    """The handler context when only metrics are recorded: handler duration and errors.

    Each series keeps one for reuse (free while ``t0 < 0``); overlapping handler calls of
    the same series get their own."""

    __slots__ = ("series", "t0")

    def __init__(self, series: Series, t0: float = -1.0) -> None:
        self.series = series
        self.t0 = t0

    def __enter__(self) -> Timer:
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


COUNT_NAMES = ("published", "delivered", "acked", "nacked", "dead_lettered", "expired", "errors")
"""The counter names of :meth:`BusTelemetry.counts` (``delivered`` counts every hand-out)."""

_HISTOGRAMS = (
    (
        "latency",
        "message_bus_delivery_latency_seconds",
        "Time from enqueue to the start of the handler.",
    ),
    ("duration", "message_bus_handler_duration_seconds", "Handler run time."),
)


def families(series: Iterable[Series], depths: Mapping[str, tuple[int, int]]) -> list[MetricFamily]:
    """The Prometheus families of ``series`` (counters and histograms per agent label and
    message type) and of ``depths`` (queue and dead-letter depth per queue)."""
    ordered = sorted(series, key=lambda s: (s.agent, s.message_type))
    labels = ["agent", "message_type"]
    out: list[MetricFamily] = []
    for attr, name, help_text in _COUNTERS:
        counter = CounterMetricFamily(name, help_text, labels=labels)
        for s in ordered:
            counter.add_metric([s.agent, s.message_type], getattr(s, attr))
        out.append(counter)
    for attr, name, help_text in _HISTOGRAMS:
        histogram = HistogramMetricFamily(name, help_text, labels=labels)
        for s in ordered:
            hist: Histogram = getattr(s, attr)
            if any(hist.counts):
                histogram.add_metric([s.agent, s.message_type], hist.buckets(), hist.sum)
        out.append(histogram)
    depth = GaugeMetricFamily(
        "message_bus_queue_depth", "Messages waiting in or locked from the queue.", labels=["agent"]
    )
    dead = GaugeMetricFamily(
        "message_bus_dead_letter_depth",
        "Messages in the queue's dead-letter queue.",
        labels=["agent"],
    )
    for queue, (d, dl) in sorted(depths.items()):
        depth.add_metric([queue], d)
        dead.add_metric([queue], dl)
    out.extend((depth, dead))
    return out
