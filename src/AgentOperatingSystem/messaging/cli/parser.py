"""The argument parser of ``aos-messaging``, declared as data.

:data:`COMMANDS` lists every command as a :class:`Command` (name, help, description, its
:class:`Arg` list and the function that runs it); a group such as ``dlq`` lists its actions
instead of a function. :func:`build_parser` turns the table into argparse parsers. To add a
command: write ``cmd_<name>(args) -> int`` in the module of its group and add a
:class:`Command` here.

An agent is named the same way by every command that acts on one (``send``, ``request``,
``tail``, ``dlq list|show|resubmit|purge``): as the first positional argument ``AGENT``;
``--agent AGENT`` (``--to AGENT`` for ``send`` and ``request``) is still accepted, so
scripts written for earlier releases keep working (:func:`.client.agent_of` merges the two).
Every command's ``--help`` ends with examples (``Command.epilog``).

A *remote* command talks to a node and so takes the shared ``node`` options: ``--node URL``
(default ``$AOS_NODE_URL``, else ``http://127.0.0.1:8080``), ``--token`` (default
``$AOS_ADMIN_TOKEN``) and ``--json``. Defaults read from the environment are read when the
parser is built, not when this module is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from .client import AGENT_OPTION, DEFAULT_NODE, NODE_ENV, TOKEN_ENV
from .conversations import cmd_conversations_list, cmd_conversations_show
from .local import cmd_bench, cmd_demo
from .messages import cmd_request, cmd_send, cmd_tail
from .output import EXIT_USAGE, PROG
from .queues import cmd_dlq_list, cmd_dlq_purge, cmd_dlq_resubmit, cmd_dlq_show, cmd_queues
from .serve import cmd_serve

__all__ = ["COMMANDS", "NODE_ARGS", "Arg", "Command", "build_parser"]

Run = Callable[[argparse.Namespace], int]
"""A command's function: parsed arguments in, exit code out."""

_N = TypeVar("_N", int, float)


class Arg:
    """One argument of a command: its flags (or positional name) and argparse's options.

    ``env`` names an environment variable whose value, when set and not empty, replaces
    ``default`` (read by :func:`build_parser`).
    """

    def __init__(
        self,
        *flags: str,
        help: str | None = None,
        default: Any = None,
        env: str | None = None,
        type: Callable[[str], Any] | None = None,
        action: str | None = None,
        choices: Sequence[str] | None = None,
        required: bool = False,
        nargs: str | None = None,
        metavar: str | None = None,
        dest: str | None = None,
    ) -> None:
        self.flags = flags
        self.env = env
        given = {
            "dest": dest,
            "action": action,
            "type": type,
            "default": default,
            "choices": choices,
            "nargs": nargs,
            "metavar": metavar,
            "help": help,
        }
        self.options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        if required:
            self.options["required"] = True

    def add_to(self, parser: argparse._ActionsContainer) -> None:
        """Add this argument to ``parser`` (or an argument group)."""
        options = self.options
        if self.env is not None:
            options = {**options, "default": os.environ.get(self.env) or options.get("default")}
        parser.add_argument(*self.flags, **options)


@dataclass(frozen=True)
class Command:
    """A command, or a group of actions (``actions`` and ``dest`` instead of ``run``)."""

    name: str
    help: str
    description: str
    run: Run | None = None
    args: tuple[Arg, ...] = ()
    remote: bool = False
    actions: tuple[Command, ...] = ()
    dest: str | None = None
    epilog: str = ""
    """Examples shown at the end of the command's ``--help`` (kept as written)."""


# ---------------------------------------------------------------------------- value types


def _number(
    convert: Callable[[str], _N], noun: str, valid: Callable[[_N], bool], rule: str
) -> Callable[[str], _N]:
    """An argparse ``type``: ``convert(text)``, refused as "not ``noun``" when it fails and
    with ``rule`` when the value is not ``valid``."""

    def parse(text: str) -> _N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(rule)
        return value

    return parse


_positive_int = _number(int, "an integer", lambda v: v >= 1, "must be >= 1")
_port = _number(
    int, "a port number", lambda v: 0 <= v <= 65535, "a port is 0..65535 (0: any free port)"
)
_positive_float = _number(float, "a number", lambda v: v > 0, "must be > 0")


# ---------------------------------------------------------------------------- the table

_CONTENT = "JSON object (or plain text, or - for stdin)"
_SENDER = Arg("--sender", default="aos-cli", help="sender id (default aos-cli)")


def _agent(what: str, *, optional: bool = False, flag: str = "--agent") -> tuple[Arg, Arg]:
    """The agent a command acts on: the positional ``AGENT`` or, for compatibility, ``flag``
    (``--agent``, or ``--to`` for send and request); :func:`.client.agent_of` merges them."""
    needed = " (optional)" if optional else f" (required: AGENT or {flag} AGENT)"
    return (
        Arg("agent", nargs="?", metavar="AGENT", help=what + needed),
        Arg(flag, dest=AGENT_OPTION, metavar="AGENT", help="the same as AGENT"),
    )


def _examples(*lines: str) -> str:
    """An epilog of example command lines."""
    return "examples:\n" + "\n".join(f"  {PROG} {line}" for line in lines)


NODE_ARGS: tuple[Arg, ...] = (
    Arg(
        "--node",
        default=DEFAULT_NODE,
        env=NODE_ENV,
        metavar="URL",
        help=f"the node's address (default: ${NODE_ENV} or {DEFAULT_NODE})",
    ),
    Arg("--token", env=TOKEN_ENV, help=f"the node's admin token (default: ${TOKEN_ENV})"),
    Arg("--json", action="store_true", help="print JSON"),
)
"""The ``node`` options every remote command takes."""

_DEMO = Command(
    "demo",
    help="run the multi-agent demo (embedded SQLite)",
    description="Run the multi-agent walk-through on the embedded SQLite engine.",
    run=cmd_demo,
    args=(Arg("--data-dir", help="where the demo's SQLite files go (default .aos/demo)"),),
)

_SERVE = Command(
    "serve",
    help="run a node (bus, network, dashboard, /metrics)",
    description="Run a node until Ctrl-C or SIGTERM: the bus on the given engine, the "
    "network endpoints (node-to-node and A2A), the dashboard at /dashboard/, the admin "
    "API at /admin/ and Prometheus metrics at /metrics. --token protects the dashboard, "
    "/admin and /metrics (--metrics-public leaves /metrics open), --a2a-token the A2A "
    "endpoints. On a host other than loopback every surface left open is logged as a "
    "warning at start, and so is --allow-unsigned on any host.",
    run=cmd_serve,
    args=(
        Arg(
            "--broker-url",
            "--engine",
            dest="broker_url",
            metavar="URL",
            help="engine URL: memory://, sqlite:///path.db, nats://host:4222 "
            "(default: SQLite in --data-dir)",
        ),
        Arg(
            "--data-dir",
            help="data directory for the default SQLite engine (default: $AOS_DATA_DIR or ./.aos)",
        ),
        Arg(
            "--storage-url",
            metavar="URL",
            help="StorageManager URL for conversations and the agent registry "
            "(default: beside the engine's database)",
        ),
        Arg("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)"),
        Arg("--port", type=_port, default=8080, help="port (default 8080; 0: any free port)"),
        Arg(
            "--token",
            env=TOKEN_ENV,
            help="require this admin token (Authorization: Bearer) for /admin, the dashboard"
            f" and /metrics (default: ${TOKEN_ENV})",
        ),
        Arg(
            "--metrics-public",
            action="store_true",
            help="serve /metrics without the --token (for a Prometheus scraper that sends no"
            " credentials; a warning is logged on a non-loopback --host)",
        ),
        Arg(
            "--a2a-token",
            env="AOS_A2A_TOKEN",
            help="require this token (Authorization: Bearer) on the A2A JSON-RPC endpoints;"
            " agent cards stay public (default: $AOS_A2A_TOKEN; without it A2A is open)",
        ),
        Arg(
            "--auth-secret",
            help="shared secret for node-to-node requests (default: $AOS_NETWORK_SECRET)",
        ),
        Arg(
            "--allow-unsigned",
            action="store_true",
            help="accept unsigned node-to-node requests (development only; logs a warning)",
        ),
        Arg("--node-id", help="this node's id (default: random)"),
        Arg(
            "--log-level",
            default="warning",
            choices=["debug", "info", "warning", "error"],
            help="log level on stderr (default warning)",
        ),
        Arg(
            "--tracing",
            action="store_true",
            help="create OpenTelemetry spans (exported by the configured SDK provider)",
        ),
        Arg(
            "--trace-console",
            action="store_true",
            help="print every span as JSON on stderr (needs opentelemetry-sdk)",
        ),
    ),
)

_SEND = Command(
    "send",
    help="publish a message through a node",
    description="Publish a message on the node's bus.",
    run=cmd_send,
    remote=True,
    epilog=_examples(
        'send cfo_agent --type query --content \'{"query": "Q2?"}\'',
        'send --type event --content \'{"quarter": "Q2"}\'     # fans out to subscribers',
        "send worker --content '{\"job\": 1}' --count 100 --node http://10.0.0.5:8080",
    ),
    args=(
        *_agent("recipient agent (omit for an event that fans out)", optional=True, flag="--to"),
        Arg(
            "--type",
            default="task",
            help="message type: task, query, event, command, status, notification, "
            "response, error (default task)",
        ),
        Arg("--content", help=_CONTENT),
        _SENDER,
        Arg("--priority", help="CRITICAL, HIGH, NORMAL, LOW, BACKGROUND or 0-4"),
        Arg("--correlation-id"),
        Arg("--ttl", type=_positive_int, help="seconds to live"),
        Arg("--metadata", help="JSON object of metadata"),
        Arg("--count", type=_positive_int, default=1, help="send it N times (progress on stderr)"),
    ),
)

_REQUEST = Command(
    "request",
    help="send a request and print the response",
    description="Send a request (QUERY by default) and wait for the response.",
    run=cmd_request,
    remote=True,
    epilog=_examples(
        'request cfo_agent --content \'{"query": "Q2 revenue?"}\'',
        "request analyst --type task --content 'forecast Q3' --timeout 60 --json",
    ),
    args=(
        *_agent("the agent to ask", flag="--to"),
        Arg("--content", help=_CONTENT),
        Arg("--timeout", type=_positive_float, default=30.0, help="seconds (default 30)"),
        _SENDER,
        Arg("--type", default="query", help="query, task or command (default query)"),
    ),
)

_TAIL = Command(
    "tail",
    help="follow messages live",
    description="Follow what the node's bus publishes, delivers and settles.",
    run=cmd_tail,
    remote=True,
    epilog=_examples("tail", "tail cfo_agent --type query", "tail --count 10 --json"),
    args=(
        *_agent("only events of this agent", optional=True),
        Arg("--type", help="only this message type"),
        Arg("--count", type=_positive_int, help="stop after N events"),
    ),
)

_QUEUES = Command(
    "queues",
    help="list queues with their depths",
    description="List the agents' queues with depth and dead letters.",
    run=cmd_queues,
    remote=True,
    epilog=_examples("queues", "queues --all --json", "queues --node http://10.0.0.5:8080"),
    args=(Arg("--all", action="store_true", help="include internal queues (_reply.*, ...)"),),
)

_DLQ = Command(
    "dlq",
    help="the dead-letter queue: list, show, resubmit, purge",
    description="Inspect and repair dead letters.",
    dest="dlq_command",
    actions=(
        Command(
            "list",
            help="list dead letters",
            description="List dead letters with reason and last error.",
            run=cmd_dlq_list,
            remote=True,
            epilog=_examples("dlq list", "dlq list cfo_agent --limit 20", "dlq list --json"),
            args=(
                *_agent("only this agent's dead letters", optional=True),
                Arg("--limit", type=_positive_int, default=100),
            ),
        ),
        Command(
            "show",
            help="show one dead letter in full",
            description="Print one dead letter as JSON.",
            run=cmd_dlq_show,
            remote=True,
            epilog=_examples(
                "dlq show cfo_agent 7f0c2a...", "dlq show --agent cfo_agent 7f0c2a..."
            ),
            args=(*_agent("the agent whose dead letter it is"), Arg("message_id")),
        ),
        Command(
            "resubmit",
            help="put dead letters back into their queue",
            description="Put dead letters back into the agent's queue (attempts reset).",
            run=cmd_dlq_resubmit,
            remote=True,
            epilog=_examples(
                "dlq resubmit cfo_agent 7f0c2a... 91be44...", "dlq resubmit cfo_agent --all"
            ),
            args=(
                *_agent("the agent whose queue gets them back"),
                Arg("message_ids", nargs="*", metavar="MESSAGE_ID"),
                Arg("--all", action="store_true", help="every dead letter of the agent"),
            ),
        ),
        Command(
            "purge",
            help="delete an agent's dead letters",
            description="Delete every dead letter of an agent.",
            run=cmd_dlq_purge,
            remote=True,
            epilog=_examples("dlq purge cfo_agent", "dlq purge cfo_agent --yes"),
            args=(
                *_agent("the agent whose dead letters go"),
                Arg("--yes", "-y", action="store_true", help="do not ask for confirmation"),
            ),
        ),
    ),
)

_CONVERSATIONS = Command(
    "conversations",
    help="list and show conversations",
    description="Conversations stored on the node.",
    dest="conv_command",
    actions=(
        Command(
            "list",
            help="list conversations",
            description="List conversations (oldest first).",
            run=cmd_conversations_list,
            remote=True,
            epilog=_examples("conversations list", "conversations list --participant cfo_agent"),
            args=(Arg("--state", choices=["active", "ended"]), Arg("--participant")),
        ),
        Command(
            "show",
            help="show a conversation with its turns",
            description="Print a conversation and its turns.",
            run=cmd_conversations_show,
            remote=True,
            epilog=_examples("conversations show 3d9f...", "conversations show 3d9f... --limit 20"),
            args=(
                Arg("conversation_id"),
                Arg("--limit", type=_positive_int, default=500, help="last N turns (default 500)"),
            ),
        ),
    ),
)

_BENCH = Command(
    "bench",
    help="run the benchmarks (source checkout)",
    description="Run benchmarks/run.py: every scenario beside its baseline.",
    run=cmd_bench,
    args=(
        Arg("--quick", action="store_true", help="smaller runs"),
        Arg("--only", help="comma-separated scenario modules (e.g. core,observability)"),
        Arg("--json-only", action="store_true", help="only the JSON lines"),
        Arg("--root", help="the source checkout holding benchmarks/ (default: search)"),
    ),
)

COMMANDS: tuple[Command, ...] = (
    _DEMO,
    _SERVE,
    _SEND,
    _REQUEST,
    _TAIL,
    _QUEUES,
    _DLQ,
    _CONVERSATIONS,
    _BENCH,
)
"""Every command of ``aos-messaging``, in the order ``--help`` lists them."""


# ---------------------------------------------------------------------------- the builder


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, except that text written on several lines (an epilog of
    examples) is printed as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """argparse with our exit code for usage errors (2) and a hint."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aos-messaging")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _node_parent() -> _Parser:
    """The parent parser holding the ``node`` options of the remote commands."""
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("node")
    for arg in NODE_ARGS:
        arg.add_to(group)
    return parent


def _add_commands(
    parser: argparse.ArgumentParser,
    commands: Sequence[Command],
    dest: str,
    metavar: str,
    node: _Parser,
) -> None:
    sub = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=_Parser)
    sub.required = True
    for command in commands:
        p = sub.add_parser(
            command.name,
            parents=[node] if command.remote else [],
            help=command.help,
            description=command.description,
            epilog=command.epilog or None,
            formatter_class=_Formatter,
        )
        for arg in command.args:
            arg.add_to(p)
        if command.actions:
            _add_commands(p, command.actions, command.dest or command.name, "<action>", node)
        else:
            p.set_defaults(func=command.run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``aos-messaging`` (every command has ``--help``)."""
    parser = _Parser(
        prog=PROG,
        description="AOS Messaging: run a node, talk to it, inspect queues and dead letters.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted. "
        f"Run `{PROG} <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_commands(parser, COMMANDS, "command", "<command>", _node_parent())
    return parser
