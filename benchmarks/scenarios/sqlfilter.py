"""Benchmark scenario: evaluation rate of a compiled SQL subscription filter.

``sqlfilter_eval_rate`` evaluates a 5-clause filter over varied property dicts and compares
it with a hand-written Python lambda doing the same five checks on the same dicts, measured
in the same run (best of several interleaved repeats, ``time.perf_counter``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from AgentOperatingSystem.messaging.servicebus.sqlfilter import parse_filter
from benchmarks.common import result

EXPRESSION = (
    "agent_id = 'ceo_agent' AND priority <= 2 AND region IN ('eu','us') "
    "AND amount * 2 > 100 AND name LIKE 'rep%'"
)


def _baseline(props: dict[str, Any]) -> bool:
    return bool(
        props["agent_id"] == "ceo_agent"
        and props["priority"] <= 2
        and props["region"] in ("eu", "us")
        and props["amount"] * 2 > 100
        and props["name"].startswith("rep")
    )


def _messages(count: int, seed: int = 20240601) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    agents = ["ceo_agent", "ceo_agent", "cfo_agent", "analyst_1"]
    regions = ["eu", "us", "apac", "eu"]
    names = ["report-q1", "rep", "summary", "reply", "invoice", "report-q3"]
    return [
        {
            "agent_id": rng.choice(agents),
            "priority": rng.randint(0, 4),
            "region": rng.choice(regions),
            "amount": rng.choice([rng.randint(0, 120), rng.uniform(0, 120)]),
            "name": rng.choice(names),
            "task_id": f"task_{i:05d}",
        }
        for i in range(count)
    ]


def _time_once(check: Callable[[dict[str, Any]], bool], messages: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    for props in messages:
        check(props)
    return time.perf_counter() - start


async def run(quick: bool) -> list[dict[str, Any]]:
    """Measure evaluations/second of the compiled filter against the hand-written baseline."""
    messages = _messages(2_000 if quick else 10_000)
    repeats = 5 if quick else 15
    evaluate = parse_filter(EXPRESSION).evaluate

    expected = [_baseline(m) for m in messages]
    if [evaluate(m) for m in messages] != expected:
        raise RuntimeError("the SQL filter and the baseline disagree")
    if not any(expected) or all(expected):
        raise RuntimeError("the benchmark data should contain matches and non-matches")

    best_filter = best_baseline = float("inf")
    for _ in range(repeats):
        best_filter = min(best_filter, _time_once(evaluate, messages))
        best_baseline = min(best_baseline, _time_once(_baseline, messages))
        await asyncio.sleep(0)
    return [
        result(
            "sqlfilter_eval_rate",
            len(messages) / best_filter,
            "evaluations/s",
            "hand-written Python function (lambda) doing the same 5 checks on the same dicts, "
            "same run",
            len(messages) / best_baseline,
            higher_is_better=True,
        )
    ]
