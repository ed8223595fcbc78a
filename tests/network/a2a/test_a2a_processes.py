"""A parked task continued after both the node and the client restart, each a separate
process: the node asks for input and is stopped; a new node process on the same SQLite
files, and a new client process, finish the task."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.ports import free_port

PY = [sys.executable, "-m", "tests.network.a2a.parked"]


def start_node(port: int, directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*PY, "node", str(port), str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop_node(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    code = proc.wait(timeout=20)
    assert proc.stdout is not None
    proc.stdout.close()
    assert code == 0


def ask(url: str, text: str, task_id: str = "") -> dict[str, str]:
    done = subprocess.run(
        [*PY, "ask", url, text, task_id], capture_output=True, text=True, timeout=60, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_parked_task_survives_a_node_and_a_client_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/agents/analyst"
    first = start_node(port, tmp_path)
    try:
        parked = ask(url, "revenue please")
    finally:
        stop_node(first)
    assert parked["state"] == "TASK_STATE_INPUT_REQUIRED" and parked["text"] == "Which quarter?"

    second = start_node(port, tmp_path)
    try:
        done = ask(url, "Q3", parked["id"])
    finally:
        stop_node(second)
    assert done == {
        "id": parked["id"],
        "state": "TASK_STATE_COMPLETED",
        "text": "revenue for Q3: 42",
    }
