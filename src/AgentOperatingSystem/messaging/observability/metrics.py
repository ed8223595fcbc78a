"""The metrics registry, on prometheus_client: counters, gauges, histograms, exposition.

:class:`MetricsRegistry` has the statsd-like calls of spec section 9.1 (``increment``,
``gauge``, ``timing``, and ``observe``), with optional labels, over a
``prometheus_client.CollectorRegistry`` of its own; :meth:`MetricsRegistry.render` is
``prometheus_client``'s text exposition (format 0.0.4) of it. Collectors add families
computed at scrape time (the bus's telemetry is one): they return
``prometheus_client.Metric`` families (:data:`MetricFamily`), built with
``CounterMetricFamily``, ``GaugeMetricFamily`` and ``HistogramMetricFamily``. The
module-level :data:`metrics` registry is the one applications use for their own metrics.
:class:`Histogram` is the plain bucket count the bus's series keep on their hot path (a
list and a sum, no lock), turned into a family only when scraped. This module knows
nothing of the bus.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import Histogram as _PromHistogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample as _PromSample
from prometheus_client.utils import floatToGoString

from ..errors import ConfigurationError

__all__ = [
    "DEFAULT_BUCKETS",
    "PROMETHEUS_CONTENT_TYPE",
    "Collector",
    "Histogram",
    "LabelKey",
    "MetricFamily",
    "MetricsRegistry",
    "Sample",
    "bound_text",
    "metrics",
]

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

MetricFamily = Metric
"""A metric family as collectors return it: ``prometheus_client.Metric``."""

Sample = _PromSample
"""One sample of a family: ``prometheus_client.samples.Sample``."""

LabelKey = tuple[tuple[str, str], ...]
"""Sorted ``(label name, value)`` pairs of one series."""

Collector = Callable[[], Iterable[Metric]]
"""Returns metric families at scrape time (see :meth:`MetricsRegistry.add_collector`)."""

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")
_SUFFIX = {"counter": "_total", "gauge": "", "histogram": "_count"}


def _metric_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationError("a metric name must be a non-empty string")
    out = _NAME_BAD.sub("_", name)
    return "_" + out if out[0].isdigit() else out


def _label_name(name: Any) -> str:
    out = _LABEL_BAD.sub("_", str(name))
    if not out or out[0].isdigit():
        out = "_" + out
    return out


_go_float: Callable[[Any], str] = floatToGoString


@lru_cache(maxsize=256)
def bound_text(bound: float) -> str:
    """A bucket bound as the exposition writes it (``le="0.5"``, ``le="1.0"``)."""
    return _go_float(bound)


class Histogram:
    """Bucket counts (non-cumulative; the last slot is +Inf) and the sum of observations:
    what the bus's series count on the hot path, exposed at scrape time."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        """The number of observations."""
        return sum(self.counts)

    def observe(self, value: float) -> None:
        """Count ``value`` in its bucket and add it to the sum."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last (``HistogramMetricFamily``'s
        ``add_metric`` takes them)."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((bound_text(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class _Families:
    """What ``generate_latest`` renders: given families, without ``_created`` samples."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for fam in self._families:
            if any(s.name.endswith("_created") for s in fam.samples):
                copy = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                copy.samples = [s for s in fam.samples if not s.name.endswith("_created")]
                fam = copy
            yield fam


class MetricsRegistry:
    """Counters, gauges and histograms on a ``prometheus_client`` registry of its own.

    The calls are those of spec section 9.1, with optional labels::

        metrics.gauge("message_bus.queue_depth", queue_size, labels={"agent": "cfo_agent"})
        metrics.increment("message_bus.messages_published")
        metrics.timing("message_bus.delivery_latency", latency_ms)

    Dots in names become underscores; a counter is exposed with the suffix ``_total`` and a
    timing as a histogram in seconds with the suffix ``_seconds``. A name keeps the kind and
    the label names it was first used with (``ConfigurationError`` otherwise), and the help
    text it was first given.
    """

    def __init__(self, *, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        if not bounds or any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise ConfigurationError("buckets must be finite numbers")
        self.buckets = bounds
        #: The ``prometheus_client`` registry holding this registry's own metrics.
        self.registry = CollectorRegistry(auto_describe=False)
        self._metrics: dict[str, tuple[str, Any, tuple[str, ...]]] = {}
        self._collectors: list[Collector] = []

    def _child(
        self, kind: str, name: str, labels: Mapping[str, Any] | None, help: str | None
    ) -> Any:
        """The ``prometheus_client`` child of metric ``name`` (exposed name) for ``labels``."""
        pairs = sorted((_label_name(k), str(v)) for k, v in (labels or {}).items())
        names = tuple(k for k, _ in pairs)
        found = self._metrics.get(name)
        if found is None:
            doc = help or name.replace("_", " ")
            base = name[: -len("_total")] if kind == "counter" else name
            try:
                if kind == "counter":
                    metric: Any = Counter(base, doc, names, registry=self.registry)
                elif kind == "gauge":
                    metric = Gauge(base, doc, names, registry=self.registry)
                else:
                    metric = _PromHistogram(
                        base, doc, names, registry=self.registry, buckets=self.buckets
                    )
            except ValueError as exc:
                raise ConfigurationError(f"metric {name!r}: {exc}") from exc
            found = self._metrics[name] = (kind, metric, names)
        elif found[0] != kind:
            raise ConfigurationError(f"metric {name!r} is a {found[0]}, not a {kind}")
        elif found[2] != names:
            raise ConfigurationError(
                f"metric {name!r} has the labels {list(found[2])}, not {list(names)}"
            )
        metric = found[1]
        return metric.labels(*(v for _, v in pairs)) if names else metric

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
        self._child("counter", metric, labels, help).inc(value)

    def gauge(
        self,
        name: str,
        value: float,
        labels: Mapping[str, Any] | None = None,
        *,
        help: str | None = None,
    ) -> None:
        """Set the gauge ``name`` to ``value``."""
        self._child("gauge", _metric_name(name), labels, help).set(float(value))

    def observe(
        self,
        name: str,
        value: float,
        labels: Mapping[str, Any] | None = None,
        *,
        help: str | None = None,
    ) -> None:
        """Record ``value`` in the histogram ``name``."""
        self._child("histogram", _metric_name(name), labels, help).observe(float(value))

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
        """The current value of a counter or gauge sample (by its exposed name, or a
        counter's without ``_total``), or None. For a histogram, the number of
        observations."""
        want = {_label_name(k): str(v) for k, v in (labels or {}).items()}
        for fam in self.collect():
            if name != fam.name and not (fam.type == "counter" and name == fam.name + "_total"):
                continue
            target = fam.name + _SUFFIX.get(fam.type, "")
            for s in fam.samples:
                if s.name == target and s.labels == want:
                    return float(s.value)
        return None

    def add_collector(self, collector: Collector) -> None:
        """Call ``collector()`` at every scrape; its families are rendered too."""
        self._collectors.append(collector)

    def remove_collector(self, collector: Collector) -> None:
        """Stop calling ``collector``."""
        if collector in self._collectors:
            self._collectors.remove(collector)

    def collect(self) -> list[Metric]:
        """Every family: the registry's own (by name), then the collectors'."""
        out = sorted(_Families(self.registry.collect()).collect(), key=lambda f: f.name)
        for collector in list(self._collectors):
            out.extend(collector())
        return out

    def render(self, *, extra: Iterable[Metric] = ()) -> str:
        """The Prometheus text exposition (version 0.0.4) of every family.

        A family whose name was already rendered (e.g. from another registry in ``extra``)
        is skipped, so the output never repeats a name."""
        seen: set[str] = set()
        families: list[Metric] = []
        for fam in [*self.collect(), *extra]:
            if fam.name in seen:
                continue
            seen.add(fam.name)
            families.append(fam)
        return generate_latest(_Families(families)).decode("utf-8")


metrics = MetricsRegistry()
"""The application-wide registry (spec section 9.1); ``/metrics`` exposes it too."""
