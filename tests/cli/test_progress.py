"""Progress of long CLI work: plain lines with counts (and no escape code) when stderr is not
a terminal, a bar with rate and ETA on a terminal; ``send --count``, ``dlq resubmit --all``
and ``dlq purge`` report it against the module's live node (from :mod:`tests.cli.test_cli`).

The unit checks drive :class:`Progress` with a :class:`ManualClock`, so rates and ETAs are
exact and nothing waits.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import subprocess

import pytest
from rich.console import Console

from AgentOperatingSystem.messaging.cli.output import Progress as ReExported
from AgentOperatingSystem.messaging.cli.progress import Progress, format_duration
from AgentOperatingSystem.messaging.clock import ManualClock
from tests.cli import test_cli
from tests.cli.test_cli import AOS, NodeProc, _dead_letter, agent_bus, run

node = test_cli.node  # the module's own live node (a module-scoped fixture)

ESC = "\x1b"


class _TTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def a_capable_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a terminal is does not depend on where the tests run (rich draws in place only
    on a terminal that is not ``TERM=dumb``); the commands' child processes inherit it."""
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


def _plain(total: int, steps: list[tuple[float, int]], **kw: object) -> list[str]:
    """The lines a plain Progress writes for ``steps`` of (seconds later, items done)."""
    clock = ManualClock()
    out = io.StringIO()
    progress = Progress(total, "work", stream=out, clock=clock.monotonic, **kw)  # type: ignore[arg-type]
    for seconds, n in steps:
        clock.advance(seconds)
        progress.advance(n)
    progress.finish()
    return out.getvalue().splitlines()


# ---------------------------------------------------------------------------- units


def test_plain_output_is_a_line_every_tenth_then_a_summary_without_escape_codes() -> None:
    out = io.StringIO()
    clock = ManualClock()
    progress = Progress(20, "sending", stream=out, clock=clock.monotonic)
    assert not progress.terminal
    for i in range(20):
        clock.advance(0.1)
        progress.advance(failed=i == 4)
    progress.finish()
    progress.finish()  # once only
    text = out.getvalue()
    assert ESC not in text and "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "sending: 2/20 (10%), 10.0/s, ETA 1.80s"
    assert lines[2] == "sending: 6/20 (30%), 1 failed, 10.0/s, ETA 1.40s"
    assert [int(re.match(r"sending: (\d+)/20", line)[1]) for line in lines[:-1]] == list(  # type: ignore[index]
        range(2, 20, 2)
    )
    assert lines[-1] == "sending: 20/20 done, 1 failed in 2.00s (10.0/s)"


def test_plain_output_also_writes_a_line_every_few_seconds() -> None:
    # 1000 items, 3 at a time every 2 s: no tenth is reached for a while, the clock speaks
    lines = _plain(1000, [(2.0, 3)] * 6, interval=5.0)
    assert lines == [
        "work: 9/1000 (0%), 1.5/s, ETA 11m00s",  # 6 s in
        "work: 18/1000 (1%), 1.5/s, ETA 10m54s",  # 6 s later
        "work: 18/1000 done in 12.0s (1.5/s)",
    ]


def test_a_big_step_writes_one_line_and_the_end_only_the_summary() -> None:
    assert _plain(10, [(1.0, 7), (1.0, 3)]) == [
        "work: 7/10 (70%), 7.0/s, ETA 0.43s",
        "work: 10/10 done in 2.00s (5.0/s)",
    ]


def test_a_terminal_console_draws_a_bar_with_rate_and_eta() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    clock = ManualClock()
    progress = Progress(100, "sending", console=console, clock=clock.monotonic)
    assert progress.terminal
    for _ in range(40):
        clock.advance(0.125)  # 8 a second
        progress.advance()
    drawn = out.getvalue()
    last = drawn.rsplit("\r", 1)[-1]  # the bar as it stands, redrawn in place
    assert "\r" in drawn and ESC in drawn
    # 60 left at 8/s: 7.5 s, which rich shows rounded up
    assert re.search(r"^\x1b\[2Ksending ━{16}[╸ ]{24}\s+40/100 8\.0/s ETA 0:00:08$", last), last
    for _ in range(60):
        clock.advance(0.125)
        progress.advance()
    progress.finish()
    assert out.getvalue().endswith("sending: 100/100 done in 12.5s (8.0/s)\n")


def test_a_stream_that_is_a_terminal_gets_the_bar_and_a_pipe_does_not() -> None:
    tty, pipe = _TTY(), io.StringIO()
    for stream in (tty, pipe):
        with Progress(3, "purging a", stream=stream) as progress:
            progress.advance(3)
    assert ESC in tty.getvalue() and "3/3" in tty.getvalue()
    assert pipe.getvalue().startswith("purging a: 3/3 done in ")
    plain = io.StringIO()
    with Progress(3, "x", console=Console(file=plain, force_terminal=False)) as progress:
        progress.advance(3)
    assert ESC not in plain.getvalue() and plain.getvalue().startswith("x: 3/3 done in ")


def test_disabled_says_nothing_and_an_error_stops_the_bar_without_a_summary() -> None:
    out = io.StringIO()
    with Progress(1, "one", stream=out, enabled=False) as progress:
        progress.advance()
    assert out.getvalue() == "" and progress.done == 1
    tty = _TTY()
    with pytest.raises(KeyboardInterrupt), Progress(5, "stopped", stream=tty) as progress:
        progress.advance()
        raise KeyboardInterrupt
    assert "done in" not in tty.getvalue()
    assert tty.getvalue().endswith("\x1b[?25h")  # the cursor is shown again


def test_durations_read_well() -> None:
    got = [format_duration(s) for s in (0.423, 12.34, 125, 3725, -1)]
    assert got == ["0.42s", "12.3s", "2m05s", "1h02m", "0.00s"]
    assert ReExported is Progress  # `from ...cli import Progress` keeps working


# ---------------------------------------------------------------------------- a live node

_LINE = re.compile(r"^(?P<label>.+?): (?P<done>\d+)/(?P<total>\d+)")


def _counts(stderr: str, label: str) -> list[int]:
    return [
        int(m["done"])
        for line in stderr.splitlines()
        if (m := _LINE.match(line)) and m["label"] == label
    ]


def test_send_count_reports_progress_and_its_final_count(node: NodeProc) -> None:
    sent = run("send", "cli_progress", "--content", '{"n": 1}', "--count", "20", node=node)
    assert sent.returncode == 0, sent.stderr
    assert len(sent.stdout.splitlines()) == 20  # the ids: stdout keeps only the results
    assert ESC not in sent.stderr
    assert _counts(sent.stderr, "sending") == [*range(2, 20, 2), 20]
    assert re.search(r"^sending: 20/20 done in [0-9.]+s \([0-9.]+/s\)$", sent.stderr, re.M)
    assert re.search(r"^sending: 2/20 \(10%\), [0-9.]+/s, ETA ", sent.stderr, re.M)
    queues = json.loads(run("queues", "--json", node=node).stdout)["queues"]
    assert {q["agent"]: q["depth"] for q in queues}["cli_progress"] == 20


def test_send_count_on_a_terminal_draws_the_bar(node: NodeProc) -> None:
    master, slave = os.openpty()
    cmd = [*AOS, "send", "cli_progress_tty", "--count", "5", "--node", node.url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    drawn = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                drawn += chunk
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(master)
    assert proc.returncode == 0
    text = drawn.decode()
    assert ESC in text and "5/5" in text and "ETA" in text and "/s" in text
    assert "sending: 5/5 done in " in text
    assert len(out.splitlines()) == 5 and ESC.encode() not in out


async def test_bulk_resubmit_reports_how_many_moved(node: NodeProc) -> None:
    ids = await _dead_letter(node, "cli_bulk_progress", 6)
    moved = await test_cli.arun("dlq", "resubmit", "cli_bulk_progress", "--all", node=node)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.strip() == "resubmitted 6 dead letter(s) to cli_bulk_progress"
    assert ESC not in moved.stderr
    assert _counts(moved.stderr, "resubmitting to cli_bulk_progress") == [1, 2, 3, 4, 5, 6]
    assert re.search(r"^resubmitting to cli_bulk_progress: 6/6 done in ", moved.stderr, re.M)
    async with agent_bus(node) as bus:
        assert await bus.dead_letter_depth("cli_bulk_progress") == 0
        back = await bus.get_messages("cli_bulk_progress", 10)
        assert sorted(m.message_id for m in back) == sorted(ids)
        for m in back:
            await bus.acknowledge(m.message_id)
    nothing = await test_cli.arun(
        "dlq", "resubmit", "cli_bulk_progress", "--all", "--json", node=node
    )
    assert nothing.returncode == 0, nothing.stderr
    assert json.loads(nothing.stdout) == {
        "agent": "cli_bulk_progress",
        "resubmitted": 0,
        "errors": [],
    }


async def test_purge_reports_its_progress(node: NodeProc) -> None:
    await _dead_letter(node, "cli_purge_progress", 3)
    done = await test_cli.arun("dlq", "purge", "cli_purge_progress", "--yes", node=node)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "purged 3 dead letter(s) from cli_purge_progress"
    assert re.search(r"^purging cli_purge_progress: 3/3 done in ", done.stderr, re.M)
    assert ESC not in done.stderr


def test_bench_counts_the_runners_suites_on_a_progress_line() -> None:
    """``bench`` follows the runner's stderr: ``# suites: N`` opens the progress, each
    ``# <suite> done in`` advances it; the runner's lines still pass (not a terminal)."""
    from AgentOperatingSystem.messaging.cli.local import follow_suites

    runner = [
        "# suites: 2\n",
        "# running core ...\n",
        "# core done in 1.0s\n",
        "# running nats ...\n",
        "Traceback: something failed\n",
        "# nats done in 2.0s\n",
    ]
    out = io.StringIO()
    follow_suites(runner, out)
    text = out.getvalue()
    assert "# running core ...\n" in text and "Traceback: something failed\n" in text
    assert "# suites: 2" not in text
    assert "benchmark suites: 1/2" in text
    assert "benchmark suites: 2/2 done in" in text
    assert "\x1b" not in text
