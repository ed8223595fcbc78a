"""Every Python block of the README runs as written, in an asyncio REPL's terms (top-level
``await`` and ``async with``), each in a fresh interpreter in an empty folder.

The one change made to a block before it runs: the node's port 8080 becomes a free port, so
the test does not depend on what else listens on this machine. A block may opt out only with
an explicit marker and a reason as its first line, ``# not run: <why>``
(:func:`python_blocks` refuses a marker without a reason). ``tests/test_docs.py`` runs the
blocks of ``docs/`` with the same machinery.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent> *)```python\n(?P<body>.*?)^(?P=indent)```", re.M | re.S)
SKIP = re.compile(r"^# not run:(?P<reason>.*)$")

# Runs a block the way `python -m asyncio` does: compiled with top-level await allowed.
RUNNER = """
import ast, asyncio, sys
source = sys.stdin.read()
code = compile(source, "doc block", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


def python_blocks(text: str) -> list[str]:
    """The Python blocks of a Markdown text, dedented, without those marked
    ``# not run: <reason>`` (a marker without a reason raises ``ValueError``)."""
    out = []
    for match in FENCE.finditer(text):
        indent = len(match.group("indent"))
        body = "".join(line[indent:] for line in match.group("body").splitlines(keepends=True))
        first = body.split("\n", 1)[0]
        skip = SKIP.match(first)
        if skip:
            if not skip.group("reason").strip():
                raise ValueError(f"a '# not run:' marker needs a reason: {first!r}")
            continue
        out.append(body)
    return out


def run_block(block: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run one block in a fresh interpreter in ``cwd``, as the asyncio REPL would."""
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


README = (ROOT / "README.md").read_text()
BLOCKS = python_blocks(README)


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) >= 2


def test_the_first_two_commands_are_make_demo_and_make_test() -> None:
    commands = re.findall(r"^(make \w+)", README, re.M)
    assert commands[:2] == ["make demo", "make test"]


def test_five_lines_are_five_statements_that_answer_a_query(tmp_path: Path) -> None:
    (block,) = python_blocks(_section("Five lines"))
    assert len([line for line in block.splitlines() if line.strip()]) == 5
    statements = [n for n in ast.walk(ast.parse(block)) if isinstance(n, ast.stmt)]
    assert len(statements) == 5
    result = run_block(block, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'revenue': 4200000}"
    # the default engine is the durable SQLite file in ./.aos
    assert (tmp_path / ".aos" / "messages.db").exists()


def test_a_node_hosts_an_agent(tmp_path: Path) -> None:
    (block,) = python_blocks(_section("Agents on other hosts: nodes, HTTP and A2A"))
    assert "port=8080" in block
    assert "import MessageBus" in block or "MessageBus," in block
    secret = re.search(r'^SECRET = "(.*)"', block, re.M)
    assert secret is not None and len(secret.group(1).encode()) >= 16
    port = free_port()
    result = run_block(block.replace("port=8080", f"port={port}"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"http://127.0.0.1:{port}"


def test_no_link_leaves_the_repository() -> None:
    assert "../shared" not in README and "messaging-spec.md" not in README
    for target in re.findall(r"\]\(([^)#]+)", README):
        assert target.startswith("http") or (ROOT / target).exists(), target


def test_the_cli_section_says_which_node_each_command_talks_to() -> None:
    text = _section("Observability, command line, dashboard")
    assert "client of a running `serve`" in text
    assert "`--node URL`, default `$AOS_NODE_URL`, else\n`http://127.0.0.1:8080`" in text
    assert "aos-messaging dlq list cfo_agent" in text


def test_a_skip_marker_needs_a_reason() -> None:
    assert python_blocks("```python\n# not run: needs Azure\nprint(1)\n```\n") == []
    with pytest.raises(ValueError, match="needs a reason"):
        python_blocks("```python\n# not run:\nprint(1)\n```\n")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_block_runs(tmp_path: Path, index: int) -> None:
    block = BLOCKS[index].replace("port=8080", f"port={free_port()}")
    result = run_block(block, tmp_path)
    assert result.returncode == 0, result.stderr
