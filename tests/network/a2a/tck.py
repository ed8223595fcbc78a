"""Run the official A2A conformance kit (github.com/a2aproject/a2a-tck) against a node that
hosts one echo agent (:mod:`tests.network.a2a.echo_node`): ``make tck``.

``python -m tests.network.a2a.tck --tck-dir DIR [--python PY] [--category NAME|all]``: starts the
node on a free port (bearer token and push notifications on, so the authentication,
extended-card and push tests apply), runs ``DIR/.venv/bin/python DIR/run_tck.py`` for each
category against ``http://localhost:<port>/agents/echo``, prints the kit's summary line of
each, stops the node (by its PID) and exits non-zero when a category has a failure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.ports import free_port

CATEGORIES = ("mandatory", "capabilities", "quality", "features", "transport-equivalence")
#: The kit's transports for each run: JSON-RPC alone (where its JSON-RPC tests are selected),
#: and both bindings for the transport-equivalence tests (and mandatory, over both).
RUNS = {
    "mandatory": ["jsonrpc", "jsonrpc,rest"],
    "capabilities": ["jsonrpc"],
    "quality": ["jsonrpc"],
    "features": ["jsonrpc"],
    "transport-equivalence": ["jsonrpc,rest"],
}
TOKEN = "tck-bearer-token-0123456789"
_SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed|skipped|errors?)\b.*) in [0-9.]+s", re.M)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the echo node exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/.well-known/agent-card.json", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the echo node did not come up")


def _run_one(
    tck_dir: Path, python: Path, env: dict[str, str], base: str, category: str, transports: str
) -> str:
    """One run of the kit: its summary line (its output too when something failed)."""
    done = subprocess.run(
        [
            str(python),
            "run_tck.py",
            "--sut-url",
            f"{base}/agents/echo",
            "--category",
            category,
            "--transports",
            transports,
        ],
        cwd=tck_dir,
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [m[1] for m in _SUMMARY.finditer(done.stdout)]
    summary = lines[-1] if lines else f"no summary (exit {done.returncode}), failed"
    if " failed" in summary or " error" in summary:
        sys.stdout.write(done.stdout[-4000:])
    return summary


def run(tck_dir: Path, python: Path, categories: list[str]) -> int:
    """Run ``categories`` of the kit in ``tck_dir`` with its ``python``; 0 when none has a
    failure."""
    port = free_port()
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.network.a2a.echo_node",
            str(port),
            "--token",
            TOKEN,
            "--push",
        ],
        stdout=subprocess.DEVNULL,
    )
    base = f"http://localhost:{port}"
    failed = False
    try:
        _wait_ready(base, node)
        env = {**os.environ, "A2A_AUTH_TYPE": "bearer", "A2A_AUTH_TOKEN": TOKEN}
        for category in categories:
            for transports in RUNS[category]:
                summary = _run_one(tck_dir, python, env, base, category, transports)
                print(f"{category:22} {transports:13} {summary}", flush=True)
                failed = failed or " failed" in summary or " error" in summary
    finally:
        node.terminate()
        node.wait(timeout=10)
    return 1 if failed else 0


def main() -> None:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tck-dir", type=Path, required=True)
    parser.add_argument("--python", type=Path, help="the kit's interpreter (DIR/.venv/...)")
    parser.add_argument("--category", default="all", choices=[*CATEGORIES, "all"])
    args = parser.parse_args()
    categories = list(CATEGORIES) if args.category == "all" else [args.category]
    tck_dir = args.tck_dir.resolve()
    python = args.python or tck_dir / ".venv" / "bin" / "python"
    raise SystemExit(run(tck_dir, python, categories))


if __name__ == "__main__":
    main()
