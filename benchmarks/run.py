"""Benchmark runner: every scenario measures its figure beside a baseline in the same run.

    python -m benchmarks.run [--quick] [--only core,network] [--json-only]

With more than one suite, each runs in a fresh interpreter of its own. Prints a table, then
one JSON line per scenario with keys scenario, value, unit, baseline,
baseline_value, ratio (and target/meets_target where the issue sets a goal). Exit code 0
even when a target is missed: the figures are the report; machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import pkgutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks.scenarios as scenarios  # noqa: E402


def discover() -> list[str]:
    """Scenario module names, core first."""
    names = sorted(m.name for m in pkgutil.iter_modules(scenarios.__path__))
    return sorted(names, key=lambda n: (n != "core", n))


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the rows."""
    head = ["scenario", "value", "unit", "baseline_value", "ratio", "target", "ok"]
    lines = [head]
    for r in rows:
        target = r.get("target")
        ok = r.get("meets_target")
        lines.append(
            [
                r["scenario"],
                f"{r['value']:.4g}",
                r["unit"],
                f"{r['baseline_value']:.4g}",
                f"{r['ratio']:.3f}",
                "" if target is None else (">=" if r["higher_is_better"] else "<=") + f"{target}",
                "" if ok is None else ("yes" if ok else "NO"),
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines)


def _in_child(name: str, quick: bool) -> list[dict[str, Any]]:
    """Run one suite in a fresh interpreter (what earlier suites left behind -- heap, threads,
    garbage -- cannot tilt its figures) and return its rows."""
    cmd = [sys.executable, "-m", "benchmarks.run", "--only", name, "--json-only"]
    if quick:
        cmd.append("--quick")
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"suite {name} exited with {done.returncode}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


async def main_async(args: argparse.Namespace) -> int:
    wanted = set(args.only.split(",")) if args.only else None
    names = [n for n in discover() if wanted is None or n in wanted]
    rows: list[dict[str, Any]] = []
    failed = 0
    print(f"# suites: {len(names)}", file=sys.stderr, flush=True)  # `aos-messaging bench` reads it
    for name in names:
        started = time.perf_counter()
        print(f"# running {name} ...", file=sys.stderr, flush=True)
        try:
            if len(names) > 1:
                got = _in_child(name, args.quick)
            else:
                module = importlib.import_module(f"benchmarks.scenarios.{name}")
                got = await module.run(args.quick)
        except Exception:
            failed += 1
            traceback.print_exc()
            continue
        for row in got:
            row.setdefault("suite", name)
        rows.extend(got)
        print(f"# {name} done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    if not args.json_only:
        print(table(rows))
    for row in rows:
        print(json.dumps(row))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (for CI smoke)")
    parser.add_argument("--only", default="", help="comma-separated scenario modules")
    parser.add_argument("--json-only", action="store_true")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
