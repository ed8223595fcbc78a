"""Helpers shared by benchmark scenarios: timing, percentiles, result rows."""

from __future__ import annotations

import statistics
from typing import Any


def result(
    scenario: str,
    value: float,
    unit: str,
    baseline: str,
    baseline_value: float,
    *,
    higher_is_better: bool,
    target: float | None = None,
) -> dict[str, Any]:
    """One row: ``ratio`` is value / baseline_value; ``target`` is the goal for that ratio
    (a floor when higher is better, a ceiling otherwise)."""
    ratio = value / baseline_value if baseline_value else float("inf")
    row: dict[str, Any] = {
        "scenario": scenario,
        "value": round(value, 4),
        "unit": unit,
        "baseline": baseline,
        "baseline_value": round(baseline_value, 4),
        "ratio": round(ratio, 4),
        "higher_is_better": higher_is_better,
    }
    if target is not None:
        row["target"] = target
        row["meets_target"] = ratio >= target if higher_is_better else ratio <= target
    return row


def p50(samples: list[float]) -> float:
    """Median."""
    return statistics.median(samples)
