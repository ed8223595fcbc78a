"""The node's sampling rings: rates, depth and latency quantiles per agent, and a memory
bound that holds for a week-long node."""

from __future__ import annotations

import pytest

from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.web.recorder import MessageRecorder
from AgentOperatingSystem.messaging.web.sampler import (
    DEFAULT_CAPACITY,
    DEFAULT_INTERVAL,
    SeriesSampler,
    quantile,
)

WEEK = 7 * 24 * 3600


def test_a_week_of_samples_stays_within_capacity_times_agents() -> None:
    clock = ManualClock()
    sampler = SeriesSampler(None, None, clock=clock, max_agents=4)
    ticks = int(WEEK / DEFAULT_INTERVAL)
    published = 0
    for n in range(ticks):
        published += 3
        clock.advance(DEFAULT_INTERVAL)
        # Agents come and go: a new one every hour, beside two steady ones.
        churn = f"agent_{n // 1800}"
        sampler.record(
            clock.now(),
            {
                "steady": {"published": published, "acked": published},
                "other": {"published": n},
                churn: {"published": n},
            },
            {"steady": n % 7, "_reply": 3},
        )
    assert sampler.size <= DEFAULT_CAPACITY * 4
    assert len(sampler.agents) <= 4
    assert "steady" in sampler.agents and "_reply" not in sampler.agents
    last = sampler.samples("steady")
    assert len(last) == DEFAULT_CAPACITY
    assert last[-1].published == pytest.approx(3 / DEFAULT_INTERVAL)
    assert last[-1].t == clock.now()


def test_rates_are_per_second_over_the_interval_and_latency_comes_from_the_histogram() -> None:
    sampler = SeriesSampler(None, None, interval=1.0)
    bounds = (0.001, 0.01, 0.1)
    sampler.record(10.0, {"a": {"published": 5, "acked": 5}}, {"a": 2}, {"a": [0, 0, 0, 0]}, bounds)
    sampler.record(
        12.0,
        {"a": {"published": 25, "acked": 15, "dead_lettered": 2}},
        {"a": 7},
        {"a": [0, 9, 1, 0]},
        bounds,
    )
    first, second = sampler.samples("a")
    assert (first.published, first.depth, first.p50_ms) == (0.0, 2, None)
    assert (second.published, second.acked, second.dead_lettered) == (10.0, 5.0, 1.0)
    assert second.depth == 7
    assert second.p50_ms is not None and 1.0 < second.p50_ms <= 10.0
    assert second.p95_ms is not None and 10.0 < second.p95_ms <= 100.0
    snap = sampler.snapshot("a")
    assert snap["agents"]["a"][1]["published"] == 10.0


def test_quantiles_of_a_bucketed_histogram() -> None:
    assert quantile((1.0, 2.0), [0, 0, 0], 0.5) is None
    assert quantile((1.0, 2.0), [2, 0, 0], 0.5) == pytest.approx(0.5)
    assert quantile((1.0, 2.0), [0, 0, 4], 0.95) == 2.0  # the overflow bucket


def test_the_recorder_keeps_only_its_capacity_and_a_bounded_number_of_steps() -> None:
    recorder = MessageRecorder(capacity=100)
    for n in range(1000):
        recorder({"event": "published", "message_id": f"m{n}", "queues": ["a"], "time": n})
    assert len(recorder) == 100
    assert recorder.get("m0") is None and recorder.get("m999") is not None
    for attempt in range(200):
        recorder({"event": "handled", "message_id": "m999", "agent": "a", "attempt": attempt})
    record = recorder.get("m999")
    assert record is not None and len(record.steps) == 50


def test_a_sampler_refuses_an_unbounded_setting() -> None:
    with pytest.raises(ValueError):
        SeriesSampler(None, None, capacity=0)
