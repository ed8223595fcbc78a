"""Every script in ``examples/`` runs as it is and prints what it says it shows.

Each runs in a fresh interpreter in an empty folder (so the embedded default's ``./.aos``
is the test's own), with ``src`` on the path as an editable install would have it. The NATS
example is given the session's ``nats-server`` (``tests/support`` fixtures) and a namespace
of its own, instead of starting a server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

#: What each example prints, line by line.
EXPECTED: dict[str, list[str]] = {
    "quickstart.py": [
        "engine: SQLite file .aos/messages.db",
        "cfo_agent <- ceo_agent: What was our Q2 revenue?",
        "ceo_agent <- cfo_agent: {'revenue': 4200000, 'currency': 'EUR'}",
        "cfo_agent <- ceo_agent: task 'prepare the board deck'",
    ],
    "request_response.py": [
        "answer: {'revenue': 4200000} | type: response",
        "reply: {'plan': 'three steps for Q3'}",
        "timeout: nobody answered nobody_home within 0.2 s",
        "failed: max_attempts",
        "dead letter error: RuntimeError: the ledger is locked",
    ],
    "sqlite_two_processes.py": [
        "worker process: ready",
        "2^2 = 4 (answered by the other process: True)",
        "3^2 = 9 (answered by the other process: True)",
        "4^2 = 16 (answered by the other process: True)",
        "worker exited with 0",
    ],
    "nats_jetstream.py": [
        "ceo_agent got: {'revenue': 4200000}",
        "cfo_agent heard the event: {'quarter': 'Q2 closed'}",
        "namespace: {namespace}",
    ],
    "two_nodes.py": [
        "hq imported: ['cfo_agent']",
        "finance node, cfo_agent <- ceo_agent: {'task': 'Q2 report'}",
        "delivered to the other node: cfo_agent",
        "hq node, ceo_agent <- cfo_agent: {'revenue': 4200000}",
    ],
    "a2a_client.py": [
        "agent card: Financial analyst | skills: ['financial_analysis']",
        "analyst <- a2a:board-meeting: Q3 revenue",
        "task state: TASK_STATE_COMPLETED",
        "artifact: analysis of: Q3 revenue",
        "GetTask: TASK_STATE_COMPLETED",
    ],
    "servicebus_topics.py": [
        "big_eu: orders [1]",
        "   vip: orders [2, 3]",
        " audit: orders [1, 2, 3, 4]",
    ],
}

#: Examples whose lines come from two concurrent agents: compared without their order.
UNORDERED = {"two_nodes.py"}


def run_example(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` with ``args`` in ``cwd`` and return what it did."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _check(name: str, result: subprocess.CompletedProcess[str], namespace: str = "") -> None:
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warning, no stray log line
    want = [line.replace("{namespace}", namespace) for line in EXPECTED[name]]
    got = result.stdout.rstrip("\n").split("\n")
    if name in UNORDERED:
        assert sorted(got) == sorted(want)
    else:
        assert [g.rstrip() for g in got] == [w.rstrip() for w in want]


def test_every_example_is_tested() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"nats_jetstream.py"}))
def test_example_runs_and_prints_what_it_shows(name: str, tmp_path: Path) -> None:
    _check(name, run_example(name, tmp_path))


def test_quickstart_uses_the_embedded_default(tmp_path: Path) -> None:
    _check("quickstart.py", run_example("quickstart.py", tmp_path))
    assert (tmp_path / ".aos" / "messages.db").is_file()


@pytest.mark.nats
def test_nats_example_on_the_fixture_server(
    tmp_path: Path, nats_url: str, nats_namespace: str
) -> None:
    result = run_example(
        "nats_jetstream.py", tmp_path, "--url", nats_url, "--namespace", nats_namespace
    )
    _check("nats_jetstream.py", result, namespace=nats_namespace)
