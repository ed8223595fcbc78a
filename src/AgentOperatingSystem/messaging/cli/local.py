"""The commands that run in this process rather than against a node: ``demo`` and
``bench``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Iterable

from .output import EXIT_INTERRUPTED, CLIError
from .progress import Progress

__all__ = ["cmd_bench", "cmd_demo", "find_benchmarks", "follow_suites"]


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: the multi-agent walk-through of :mod:`..demo`."""
    try:
        from ..demo import main as demo_main
    except ImportError as exc:
        raise CLIError(f"the demo is not available in this installation: {exc}") from None
    argv: list[str] = []
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    return int(demo_main(argv) or 0)


def find_benchmarks(root: Path | None) -> Path | None:
    """The source checkout holding ``benchmarks/run.py``: ``root`` when given, else the
    current directory or one above it, else the checkout this package was installed from."""
    if root is not None:
        return root if (root / "benchmarks" / "run.py").is_file() else None
    cwd = Path.cwd().resolve()
    for candidate in [cwd, *cwd.parents, *Path(__file__).resolve().parents]:
        if (candidate / "benchmarks" / "run.py").is_file():
            return candidate
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    """``bench``: run ``benchmarks/run.py`` of a source checkout in a child process."""
    root = find_benchmarks(Path(args.root).resolve() if args.root else None)
    if root is None:
        raise CLIError(
            "benchmarks/run.py not found"
            + (f" in {args.root}" if args.root else "")
            + ": run this from a source checkout of aos-messaging (or pass --root)"
        )
    cmd = [sys.executable, "-m", "benchmarks.run"]
    if args.quick:
        cmd.append("--quick")
    if args.only:
        cmd += ["--only", args.only]
    if args.json_only:
        cmd.append("--json-only")
    print(f"running {' '.join(cmd[1:])} in {root}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    try:
        with subprocess.Popen(
            cmd, cwd=root, env=env, stderr=subprocess.PIPE, text=True, bufsize=1
        ) as child:
            assert child.stderr is not None
            follow_suites(child.stderr, sys.stderr)
            return child.wait()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def follow_suites(lines: Iterable[str], out: IO[str], progress: Progress | None = None) -> None:
    """Pass the runner's stderr ``lines`` on to ``out`` and count its suites on a progress
    bar: ``# suites: N`` opens it, each ``# <suite> done in ...`` advances it."""
    try:
        for line in lines:
            if line.startswith("# suites: ") and progress is None:
                total = int(line.split(":", 1)[1])
                progress = Progress(total, "benchmark suites", stream=out, enabled=total > 1)
                continue
            if progress is not None and line.startswith("# ") and " done in " in line:
                progress.advance()
            # a bar replaces the runner's own "# ..." lines; anything else (errors) passes
            if progress is None or not progress.terminal or not line.startswith("# "):
                out.write(line)
                out.flush()
    finally:
        if progress is not None:
            progress.finish()
