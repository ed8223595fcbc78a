"""Helpers shared by benchmark scenarios: timing, percentiles, result rows."""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable


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


def task_messages(n: int, recipient: str = "sink", pad: int = 0) -> list[Any]:
    """``n`` TASK messages to ``recipient`` (content ``{"i": i}``, plus ``pad`` bytes of text
    when asked), built before timing starts."""
    from AgentOperatingSystem.messaging.types import Message, MessageType

    extra = {"pad": "x" * pad} if pad else {}
    return [
        Message(
            message_type=MessageType.TASK,
            sender_id="bench",
            recipient_id=recipient,
            content={"i": i, **extra},
        )
        for i in range(n)
    ]


def countdown(n: int) -> tuple[Callable[[Any], Awaitable[None]], asyncio.Event]:
    """An async handler that counts its calls and an event set at the ``n``-th: the same
    handler for a baseline and for the bus, so neither pays for a different one."""
    count = 0
    done = asyncio.Event()

    async def handler(_: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    return handler, done


#: The checkout holding ``benchmarks/``: where a :class:`Child` runs, so ``-m benchmarks...``
#: resolves whatever the caller's working directory.
ROOT = Path(__file__).resolve().parent.parent


class Child:
    """``python -m <module> <args>`` in a child process for the duration of ``async with``
    (run in :data:`ROOT`): started, its first line of output kept in :attr:`line` (it prints
    one when it serves), stopped by closing its standard input, then by PID."""

    def __init__(self, module: str, *args: str) -> None:
        self.args = [sys.executable, "-m", module, *args]
        self.proc: asyncio.subprocess.Process | None = None
        self.line = ""

    async def __aenter__(self) -> Child:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT
        )
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        except TimeoutError:
            await self.__aexit__()
            raise RuntimeError(f"{' '.join(self.args[2:])} did not start") from None
        self.line = line.decode().strip()
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
