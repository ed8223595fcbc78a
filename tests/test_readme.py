"""Every Python block of the README runs as written, in an asyncio REPL's terms (top-level
``await`` and ``async with``), each in a fresh interpreter in an empty folder.

The one change made to a block before it runs: the node's port 8080 becomes a free port, so
the test does not depend on what else listens on this machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)

# Runs a block the way `python -m asyncio` does: compiled with top-level await allowed.
RUNNER = """
import ast, asyncio, sys
source = sys.stdin.read()
code = compile(source, "README block", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


def _run(block: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=block,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) >= 2


def test_five_lines_answer_a_query(tmp_path: Path) -> None:
    block = next(b for b in BLOCKS if "bus.request(" in b)
    result = _run(block, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'revenue': 4200000}"
    # the default engine is the durable SQLite file in ./.aos
    assert (tmp_path / ".aos" / "messages.db").exists()


def test_a_node_hosts_an_agent(tmp_path: Path) -> None:
    block = next(b for b in BLOCKS if "NetworkProtocol(" in b)
    assert "port=8080" in block
    port = free_port()
    result = _run(block.replace("port=8080", f"port={port}"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_block_runs(tmp_path: Path, index: int) -> None:
    block = BLOCKS[index].replace("port=8080", f"port={free_port()}")
    result = _run(block, tmp_path)
    assert result.returncode == 0, result.stderr
