"""One grammar for the agent a command acts on: the first positional ``AGENT`` everywhere
(``send``, ``request``, ``tail``, ``dlq list|show|resubmit|purge``), with ``--agent`` (and
``--to`` for send and request) still accepted; each command's ``--help`` ends with examples.

The parser and the merging are checked without a node; the commands run against the module's
live node (``aos-messaging serve`` on SQLite, from :mod:`tests.cli.test_cli`).
"""

from __future__ import annotations

import argparse
import json

import pytest

from AgentOperatingSystem.messaging.cli import build_parser, main
from AgentOperatingSystem.messaging.cli.client import agent_of, required_agent
from AgentOperatingSystem.messaging.cli.output import EXIT_USAGE, CLIError
from tests.cli import test_cli
from tests.cli.test_cli import NodeProc, _dead_letter, run

node = test_cli.node  # the module's own live node (a module-scoped fixture)


def _agent(argv: list[str]) -> str | None:
    args = build_parser().parse_args(argv)
    flag = "--to" if argv[0] in ("send", "request") else "--agent"
    return agent_of(args, flag=flag)


@pytest.mark.parametrize(
    "argv",
    [
        ["dlq", "list", "cfo"],
        ["dlq", "list", "--agent", "cfo"],
        ["dlq", "show", "cfo", "m1"],
        ["dlq", "show", "--agent", "cfo", "m1"],
        ["dlq", "show", "m1", "--agent", "cfo"],
        ["dlq", "resubmit", "cfo", "--all"],
        ["dlq", "resubmit", "--agent", "cfo", "--all"],
        ["dlq", "purge", "cfo", "--yes"],
        ["dlq", "purge", "--agent", "cfo", "--yes"],
        ["tail", "cfo"],
        ["tail", "--agent", "cfo"],
        ["send", "cfo", "--content", "{}"],
        ["send", "--to", "cfo", "--content", "{}"],
        ["request", "cfo"],
        ["request", "--to", "cfo"],
        ["dlq", "list", "cfo", "--agent", "cfo"],
    ],
    ids=" ".join,
)
def test_every_command_takes_the_agent_positionally_or_by_its_old_flag(argv: list[str]) -> None:
    assert _agent(argv) == "cfo"


def test_show_by_flag_keeps_the_message_id() -> None:
    args = build_parser().parse_args(["dlq", "show", "--agent", "cfo", "m1"])
    assert (required_agent(args), args.message_id) == ("cfo", "m1")


def test_optional_agent_may_be_left_out_and_a_required_one_may_not() -> None:
    assert _agent(["dlq", "list"]) is None
    assert _agent(["tail"]) is None
    assert _agent(["send", "--type", "event"]) is None
    args = build_parser().parse_args(["request"])
    with pytest.raises(CLIError) as err:
        required_agent(args, flag="--to")
    assert err.value.code == EXIT_USAGE
    assert str(err.value) == "name the agent: AGENT (or --to AGENT)"


def test_two_different_agents_are_a_usage_error() -> None:
    args = build_parser().parse_args(["dlq", "purge", "a1", "--agent", "a2"])
    with pytest.raises(CLIError) as err:
        agent_of(args)
    assert err.value.code == EXIT_USAGE
    assert "two agents given: 'a1' and --agent 'a2'" in str(err.value)
    assert agent_of(argparse.Namespace(agent="a1", agent_option=None)) == "a1"


@pytest.mark.parametrize(
    "command",
    [
        ["send"],
        ["request"],
        ["tail"],
        ["queues"],
        ["dlq", "list"],
        ["dlq", "show"],
        ["dlq", "resubmit"],
        ["dlq", "purge"],
        ["conversations", "list"],
        ["conversations", "show"],
    ],
    ids=" ".join,
)
def test_help_ends_with_examples(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    examples = out.split("examples:\n", 1)[1].splitlines()
    assert examples and all(line.startswith("  aos-messaging " + command[0]) for line in examples)
    assert "AGENT" in out.split("examples:")[0] or command[0] in ("queues", "conversations")


def test_usage_error_exits_2_as_a_subprocess() -> None:
    twice = run("dlq", "show", "a1", "m1", "--agent", "a2", "--node", "http://127.0.0.1:9")
    assert twice.returncode == 2
    assert "two agents given" in twice.stderr
    none = run("dlq", "purge", "--yes", "--node", "http://127.0.0.1:9")
    assert none.returncode == 2
    assert "name the agent: AGENT (or --agent AGENT)" in none.stderr


async def test_dlq_commands_on_a_live_node_accept_both_spellings(node: NodeProc) -> None:
    ids = await _dead_letter(node, "cli_grammar", 3)
    positional = run("dlq", "list", "cli_grammar", "--json", node=node)
    assert positional.returncode == 0, positional.stderr  # it used to fail with the usage line
    flagged = run("dlq", "list", "--agent", "cli_grammar", "--json", node=node)
    assert json.loads(positional.stdout) == json.loads(flagged.stdout)
    assert sorted(d["message_id"] for d in json.loads(positional.stdout)) == sorted(ids)

    shown = run("dlq", "show", "--agent", "cli_grammar", ids[0], node=node)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["message_id"] == ids[0]

    two = run("dlq", "resubmit", "--agent", "cli_grammar", ids[0], ids[1], node=node)
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip() == "resubmitted 2 dead letter(s) to cli_grammar"
    left = json.loads(run("dlq", "list", "cli_grammar", "--json", node=node).stdout)
    assert [d["message_id"] for d in left] == [ids[2]]

    purged = run("dlq", "purge", "--agent", "cli_grammar", "--yes", node=node)
    assert purged.stdout.strip() == "purged 1 dead letter(s) from cli_grammar"


def test_send_takes_the_recipient_positionally(node: NodeProc) -> None:
    sent = run("send", "cli_positional", "--content", '{"x": 1}', node=node)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.split()[1:] == ["->", "cli_positional"]


def _epilog_examples() -> list[str]:
    from AgentOperatingSystem.messaging.cli.parser import COMMANDS

    lines = []
    for command in COMMANDS:
        for c in (command, *command.actions):
            lines += [line.strip() for line in c.epilog.splitlines()[1:]]
    return lines


@pytest.mark.parametrize("line", _epilog_examples())
def test_every_help_example_parses(line: str) -> None:
    import shlex

    words = shlex.split(line, comments=True)
    assert words[0] == "aos-messaging"
    args = build_parser().parse_args(words[1:])
    assert callable(args.func)
