"""The metrics registry: counters, gauges and histograms, and the Prometheus text format.

:class:`MetricsRegistry` has the statsd-like calls of spec section 9.1 (``increment``,
``gauge``, ``timing``, and ``observe``), with optional labels, and renders every family in
the Prometheus text exposition format, version 0.0.4 (:meth:`MetricsRegistry.render`).
Collectors add families computed at scrape time (the bus's telemetry is one). The
module-level :data:`metrics` registry is the one applications use for their own metrics.
This module knows nothing of the bus.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

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


class Histogram:
    """Bucket counts (non-cumulative; the last slot is +Inf) and the sum of observations."""

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

    def samples(self, name: str, labels: LabelKey) -> list[Sample]:
        """The ``_bucket`` (cumulative), ``_sum`` and ``_count`` samples of ``name``."""
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
    histograms: dict[LabelKey, Histogram] = field(default_factory=dict)


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
            hist = fam.histograms[key] = Histogram(self.buckets)
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
