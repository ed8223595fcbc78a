"""``aos-messaging``: every command run as a subprocess against a live node.

One node (``aos-messaging serve`` on a free port, SQLite in a temporary directory) serves
the whole module; the test process opens its own bus on the same SQLite file to play the
agents (a responder, a consumer that dead-letters) and checks what the commands did.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.cli import build_parser, main
from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
from AgentOperatingSystem.messaging.types import Message, MessageType
from AgentOperatingSystem.storage.manager import StorageManager

ROOT = Path(__file__).resolve().parents[2]


def _exe() -> list[str]:
    script = Path(sys.executable).with_name("aos-messaging")
    if script.exists():
        return [str(script)]
    found = shutil.which("aos-messaging")
    if found:
        return [found]
    return [sys.executable, "-m", "AgentOperatingSystem.messaging.cli"]


AOS = _exe()


class NodeProc:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = tmp / "bus.db"
        self.store = tmp / "store.db"
        self.broker_url = f"sqlite:///{self.db}"
        self.storage_url = f"sqlite:///{self.store}"
        self.proc = subprocess.Popen(
            [
                *AOS,
                "serve",
                "--broker-url",
                self.broker_url,
                "--storage-url",
                self.storage_url,
                "--port",
                "0",
                "--allow-unsigned",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", first)
        if match is None:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"serve did not start: {first!r} {err}")
        self.url = match.group(1)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    n = NodeProc(tmp_path_factory.mktemp("cli-node"))
    try:
        yield n
    finally:
        code, err = n.stop()
        assert code == 0, err
        assert "stopped" in err


def run(*args: str, node: NodeProc | None = None, timeout: float = 30, **kw: Any) -> Any:
    cmd = [*AOS, *args]
    if node is not None:
        cmd += ["--node", node.url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


async def arun(*args: str, node: NodeProc | None = None, timeout: float = 30) -> Any:
    """``run`` in a thread, so this test's own bus keeps running meanwhile."""
    return await asyncio.to_thread(run, *args, node=node, timeout=timeout)


def agent_bus(node: NodeProc) -> MessageBus:
    return MessageBus(MessageBusConfig(broker_url=node.broker_url, poll_interval=0.02))


# ---------------------------------------------------------------------------- usage


def _commands() -> list[list[str]]:
    return [
        [],
        ["demo"],
        ["serve"],
        ["send"],
        ["request"],
        ["tail"],
        ["queues"],
        ["dlq"],
        ["dlq", "list"],
        ["dlq", "show"],
        ["dlq", "resubmit"],
        ["dlq", "purge"],
        ["conversations"],
        ["conversations", "list"],
        ["conversations", "show"],
        ["bench"],
    ]


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aos-messaging")
    assert "--help" in out


def test_help_and_usage_errors_as_a_subprocess() -> None:
    helped = run("--help")
    assert helped.returncode == 0
    for name in ("demo", "serve", "send", "request", "tail", "queues", "dlq", "conversations"):
        assert name in helped.stdout
    bad = run("queues", "--bogus")
    assert bad.returncode == 2
    assert "error: unrecognized arguments: --bogus" in bad.stderr
    missing = run("request")
    assert missing.returncode == 2
    assert "name the agent: AGENT (or --to AGENT)" in missing.stderr
    nothing = run()
    assert nothing.returncode == 2


def test_unreachable_node_is_an_error_with_a_hint() -> None:
    got = run("queues", "--node", "http://127.0.0.1:9")
    assert got.returncode == 1
    assert got.stderr.startswith("aos-messaging: error: cannot reach the node at")
    assert "aos-messaging serve" in got.stderr
    bad_url = run("queues", "--node", "not-a-url")
    assert bad_url.returncode == 1
    assert "--node must be an http(s) URL" in bad_url.stderr


def test_parser_is_buildable_without_a_node() -> None:
    args = build_parser().parse_args(["send", "--to", "a", "--count", "2"])
    assert args.count == 2 and args.agent_option == "a" and args.agent is None


def test_node_and_token_defaults_are_read_from_the_environment_when_the_parser_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AOS_NODE_URL", raising=False)
    monkeypatch.delenv("AOS_ADMIN_TOKEN", raising=False)
    plain = build_parser()
    monkeypatch.setenv("AOS_NODE_URL", "http://10.0.0.7:9000")
    monkeypatch.setenv("AOS_ADMIN_TOKEN", "tok")
    args = build_parser().parse_args(["dlq", "list"])
    assert (args.node, args.token) == ("http://10.0.0.7:9000", "tok")
    assert build_parser().parse_args(["serve"]).token == "tok"
    before = plain.parse_args(["queues"])
    assert (before.node, before.token) == ("http://127.0.0.1:8080", None)
    monkeypatch.setenv("AOS_NODE_URL", "")
    assert build_parser().parse_args(["queues"]).node == "http://127.0.0.1:8080"


def test_groups_name_the_chosen_action_and_flags_keep_their_names() -> None:
    parser = build_parser()
    dlq = parser.parse_args(["dlq", "resubmit", "a1", "m1", "m2", "--node", "http://h:1"])
    assert (dlq.command, dlq.dlq_command, dlq.agent) == ("dlq", "resubmit", "a1")
    assert dlq.message_ids == ["m1", "m2"] and dlq.all is False and dlq.node == "http://h:1"
    conv = parser.parse_args(["conversations", "show", "c1", "--limit", "3", "--json"])
    assert (conv.conv_command, conv.conversation_id, conv.limit, conv.json) == (
        "show",
        "c1",
        3,
        True,
    )
    serve = parser.parse_args(["serve", "--engine", "memory://", "--port", "0"])
    assert (serve.broker_url, serve.port, serve.host, serve.log_level) == (
        "memory://",
        0,
        "127.0.0.1",
        "warning",
    )
    assert not hasattr(serve, "node") and not hasattr(serve, "json")


# ---------------------------------------------------------------------------- node commands


def test_send_then_queues(node: NodeProc) -> None:
    sent = run("send", "--to", "cli_inbox", "--type", "task", "--content", '{"x": 1}', node=node)
    assert sent.returncode == 0, sent.stderr
    message_id, arrow = sent.stdout.split()[:2]
    assert re.fullmatch(r"[0-9a-f]{32}", message_id) and arrow == "->"
    queues = run("queues", "--json", node=node)
    assert queues.returncode == 0, queues.stderr
    rows = {q["agent"]: q for q in json.loads(queues.stdout)["queues"]}
    assert rows["cli_inbox"]["depth"] == 1
    table = run("queues", node=node)
    assert table.stdout.splitlines()[0].split() == ["AGENT", "DEPTH", "DEAD", "CONSUMER"]
    assert any(line.split()[:2] == ["cli_inbox", "1"] for line in table.stdout.splitlines())


def test_send_many_shows_progress_and_bad_input_fails(node: NodeProc) -> None:
    sent = run("send", "--to", "cli_bulk", "--content", "hello", "--count", "3", node=node)
    assert sent.returncode == 0, sent.stderr
    assert len(sent.stdout.splitlines()) == 3
    assert re.search(r"sending: 3/3 done in [0-9.]+s", sent.stderr)
    wrong = run("send", "--to", "x", "--type", "gossip", node=node)
    assert wrong.returncode == 1
    assert "unknown message type 'gossip'" in wrong.stderr


async def test_request_gets_the_response_or_times_out(node: NodeProc) -> None:
    async with agent_bus(node) as bus:

        async def echo(m: Message) -> dict[str, Any]:
            return {"echo": m.content, "by": "cli_echo"}

        await bus.subscribe("cli_echo", [MessageType.QUERY], echo)
        got = await arun(
            "request", "--to", "cli_echo", "--content", '{"q": 7}', "--timeout", "10", node=node
        )
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout) == {"echo": {"q": 7}, "by": "cli_echo"}
    late = run("request", "--to", "cli_nobody", "--timeout", "0.3", node=node)
    assert late.returncode == 1
    assert "no response from 'cli_nobody' within 0.3s" in late.stderr


def test_tail_follows_messages_live(node: NodeProc) -> None:
    cmd = [*AOS, "tail", "--node", node.url, "--count", "1", "--json", "--agent", "cli_tail"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("following http://")
        sent = run("send", "--to", "cli_tail", "--content", '{"hello": "tail"}', node=node)
        assert sent.returncode == 0, sent.stderr
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    event = json.loads(out.splitlines()[0])
    assert event["event"] == "published"
    assert event["queues"] == ["cli_tail"]
    assert event["message_id"] == sent.stdout.split()[0]
    assert '"hello":"tail"' in event["content"]


async def _dead_letter(node: NodeProc, agent: str, n: int = 1) -> list[str]:
    async with agent_bus(node) as bus:
        ids = []
        for i in range(n):
            result = await bus.publish(
                message_type=MessageType.TASK,
                recipient_id=agent,
                content={"i": i},
                retry_policy={"max_attempts": 1},
            )
            ids.append(result.message_id)
        for m in await bus.get_messages(agent, n):
            await bus.nack(m.message_id, error=RuntimeError("warehouse down"))
        assert await bus.dead_letter_depth(agent) == n
    return ids


async def test_dlq_list_show_resubmit(node: NodeProc) -> None:
    ids = await _dead_letter(node, "cli_dlq", 3)
    listed = run("dlq", "list", "--agent", "cli_dlq", "--json", node=node)
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    assert sorted(d["message_id"] for d in letters) == sorted(ids)
    assert {d["reason"] for d in letters} == {"max_attempts"}
    assert all("RuntimeError: warehouse down" in d["error"] for d in letters)
    table = run("dlq", "list", node=node)
    assert "max_attempts" in table.stdout and "warehouse down" in table.stdout

    shown = run("dlq", "show", "cli_dlq", ids[0], node=node)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["message_id"] == ids[0] and body["content"] == {"i": 0}
    assert body["attempts"] == 1

    missing = run("dlq", "show", "cli_dlq", "feedface", node=node)
    assert missing.returncode == 1
    assert "no dead letter 'feedface' in 'cli_dlq'" in missing.stderr

    one = run("dlq", "resubmit", "cli_dlq", ids[0], node=node)
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "resubmitted 1 dead letter(s) to cli_dlq"
    rest = run("dlq", "resubmit", "cli_dlq", "--all", node=node)
    assert rest.returncode == 0, rest.stderr
    assert "resubmitted 2 dead letter(s)" in rest.stdout
    assert re.search(r"resubmitting to cli_dlq: 2/2 done", rest.stderr)
    again = run("dlq", "resubmit", "cli_dlq", ids[0], node=node)
    assert again.returncode == 1
    usage = run("dlq", "resubmit", "cli_dlq", node=node)
    assert usage.returncode == 2

    async with agent_bus(node) as bus:
        assert await bus.dead_letter_depth("cli_dlq") == 0
        back = await bus.get_messages("cli_dlq", 10)
        assert sorted(m.message_id for m in back) == sorted(ids)
        for m in back:
            await bus.acknowledge(m.message_id)


async def test_dlq_purge_needs_confirmation(node: NodeProc) -> None:
    await _dead_letter(node, "cli_purge", 2)
    refused = run("dlq", "purge", "cli_purge", node=node, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2
    assert "without --yes" in refused.stderr
    done = run("dlq", "purge", "cli_purge", "--yes", node=node)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "purged 2 dead letter(s) from cli_purge"
    async with agent_bus(node) as bus:
        assert await bus.dead_letter_depth("cli_purge") == 0


async def test_conversations_list_and_show(node: NodeProc) -> None:
    async with StorageManager(node.storage_url) as storage:
        conv = ConversationSystem(storage)
        cid = await conv.start_conversation(
            participants=["ceo_agent", "cfo_agent"], topic="quarterly_planning"
        )
        await conv.add_message(cid, "ceo_agent", "What's our Q2 revenue?")
        await conv.add_message(cid, "cfo_agent", {"text": "4.2M"}, message_type="response")
    listed = run("conversations", "list", "--json", node=node)
    assert listed.returncode == 0, listed.stderr
    rows = {c["conversation_id"]: c for c in json.loads(listed.stdout)}
    assert rows[cid]["topic"] == "quarterly_planning" and rows[cid]["message_count"] == 2
    table = run("conversations", "list", "--participant", "cfo_agent", node=node)
    assert cid in table.stdout
    shown = run("conversations", "show", cid, node=node)
    assert shown.returncode == 0, shown.stderr
    assert "[1] ceo_agent (query): What's our Q2 revenue?" in shown.stdout
    assert '[2] cfo_agent (response): {"text": "4.2M"}' in shown.stdout
    missing = run("conversations", "show", "nope", node=node)
    assert missing.returncode == 1
    assert "no conversation 'nope'" in missing.stderr


# ---------------------------------------------------------------------------- local commands


def test_demo_runs_the_walkthrough(tmp_path: Path) -> None:
    got = run("demo", "--data-dir", str(tmp_path / "demo"), timeout=60)
    assert got.returncode == 0, got.stderr
    assert "processed event 'quarterly_report_ready' after resubmission" in got.stdout


def test_bench_runs_the_runner(tmp_path: Path) -> None:
    got = run(
        "bench",
        "--quick",
        "--only",
        "observability",
        "--json-only",
        "--root",
        str(ROOT),
        timeout=120,
    )
    assert got.returncode == 0, got.stderr
    rows = [json.loads(line) for line in got.stdout.splitlines() if line.startswith("{")]
    assert rows and all(r["suite"] == "observability" for r in rows)
    assert "running -m benchmarks.run --quick" in got.stderr
    nowhere = run("bench", "--root", str(tmp_path))
    assert nowhere.returncode == 1
    assert nowhere.stderr.startswith(
        f"aos-messaging: error: benchmarks/run.py not found in {tmp_path}"
    )


def test_serve_refuses_a_busy_port_and_stops_on_sigterm(tmp_path: Path, node: NodeProc) -> None:
    port = node.url.rsplit(":", 1)[1]
    busy = run(
        "serve",
        "--broker-url",
        "memory://",
        "--storage-url",
        "memory://",
        "--port",
        port,
        timeout=30,
    )
    assert busy.returncode == 1
    assert busy.stderr.startswith("aos-messaging: error: cannot listen on 127.0.0.1:")
    other = NodeProc(tmp_path)
    time.sleep(0.1)
    code, err = other.stop()
    assert code == 0 and "stopped" in err
    assert os.path.exists(other.db)
