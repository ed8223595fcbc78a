"""mkdocs hooks: the documentation's tables, generated from the code at build time.

A page asks for a table with a marker on a line of its own, ``<!-- aos:NAME -->``; the
hook replaces it with the Markdown :data:`TABLES` ``[NAME]`` returns. An unknown marker, a
setting without a description or a description of a setting that no longer exists fails
the build (``mkdocs build --strict`` turns the warning into an error), so the tables cannot
drift from the code:

* ``messagebus-config`` -- every field of ``MessageBusConfig``: type, default, and the
  ``#:`` comment above it in the source (else the short text in :data:`BUS_FIELDS`);
* ``network-config`` -- every flat setting of ``NetworkConfig``, by group, with its group's
  docstring;
* ``engine-urls`` -- the URL schemes and every query option the engines accept;
* ``error-tree`` -- the exception tree under ``MessagingError``, from the classes;
* ``metrics`` -- the Prometheus families a bus with ``enable_metrics=True`` exposes, read
  from a live in-memory bus's ``/metrics`` rendering;
* ``cli`` -- every command's ``--help``.

``tests/test_docs.py`` calls the same functions, so ``make test`` fails on drift too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import io
import logging
import os
import re
from typing import Any, Callable

log = logging.getLogger("mkdocs.hooks.aos")

MARKER = re.compile(r"^<!-- aos:([a-z-]+) -->$", re.M)

#: Short descriptions of the ``MessageBusConfig`` fields that have no ``#:`` comment in the
#: source. A field with neither fails the build; an entry naming no field fails it too.
BUS_FIELDS: dict[str, str] = {
    "enable_persistence": "Without `broker_url`: True means SQLite in `data_dir`, "
    "False means `memory://`.",
    "max_queue_size": "Messages one queue may hold; a publish beyond it raises "
    "`QueueFullError` (nothing is dropped).",
    "message_ttl_seconds": "Default time to live of a message (`Message.ttl` wins); "
    "an expired message is dead-lettered with reason `expired`. None: no limit.",
    "broker_url": "The engine: `memory://`, `sqlite:///path.db[?options]`, "
    "`nats://host:4222[,host2][?options]` (see the engine URL table).",
    "data_dir": "Where the default SQLite files and the private signing keys live "
    "(`$AOS_DATA_DIR`, else `./.aos`).",
    "sign_messages": "Sign every message with its sender's Ed25519 key (`register_agent_keys`).",
    "require_signatures": "Dead-letter (reason `signature`) a message whose signature is "
    "missing, forged or does not match.",
    "lock_seconds": "How long a received message stays locked before it comes back; "
    "subscriptions renew the lock while their handler runs.",
    "default_retry_policy": "A `RetryPolicy` or a dict: `max_attempts`, `initial_delay`, "
    "`backoff_multiplier`, `max_delay`, `jitter`.",
    "dedup_window_seconds": "How long an `idempotency_key` (exactly-once) or a repeated "
    "message id is remembered for deduplicating publishes.",
    "processed_ttl_seconds": "How long an exactly-once handler's processed key is kept, "
    "so a redelivered copy does not run the handler again.",
    "max_message_bytes": "Largest encoded message accepted (publish raises "
    "`MessageTooLargeError`; a larger one from an engine is dead-lettered).",
    "prefetch": "Messages a consumer receives from the engine in one go.",
    "poll_interval": "Seconds between two looks at an idle queue when the engine has no "
    "wake-up for it.",
    "hop_limit": "A message published from handlers more than this many times in a row is "
    "dead-lettered (reason `hop_limit`): a loop breaker.",
    "shutdown_timeout": "How long `stop()` waits for running handlers before it cancels them.",
    "default_sender_id": "`sender_id` of a message published without one.",
    "default_permission": "Access control for an agent without an entry: `allow` or `deny`.",
    "storage_url": "The StorageManager (key ring, access control, registry); default: "
    "beside the engine (a `-store.db` SQLite file, or the same NATS).",
    "enable_tracing": "OpenTelemetry spans for publish, delivery and handler, linked across "
    "processes by W3C trace context.",
    "enable_metrics": "Prometheus counters, gauges and histograms per agent (`/metrics` on "
    "a node).",
}

#: Every query option of an engine URL: (engine, default, meaning). The keys must be exactly
#: what the engines accept (checked against their code).
URL_OPTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("sqlite", "synchronous"): (
        "full",
        "`full`: a committed publish survives a power loss; `normal`: it survives a crash "
        "of the process (faster); `extra`: SQLite's EXTRA level (as full, plus a directory sync).",
    ),
    ("sqlite", "busy_timeout_ms"): (
        "5000",
        "How long a writer waits for another process's transaction on the same file "
        "before retrying with backoff.",
    ),
    ("nats", "namespace"): (
        "aos",
        "Prefix of every stream, consumer and bucket (1-64 letters, digits, `_`, `-`): "
        "deployments that share a server keep apart.",
    ),
    ("nats", "replicas"): (
        "1",
        "Copies of each stream and bucket on a JetStream cluster, 1 to 5 (at most the "
        "number of servers).",
    ),
}


# ---------------------------------------------------------------------------- helpers


def _type_text(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    text = text or str(annotation)
    return "`" + text.replace("typing.", "") + "`"  # a pipe in a code span stays in its cell


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:
        factory = f.default_factory
        doc = inspect.getsource(factory)
        env = re.findall(r"environ\.get\(\"([A-Z_]+)\"", doc)
        if env:
            return f"`${env[0]}`" + (", else `./.aos`" if "./.aos" in doc else "")
        return "computed"
    return "required"


def _comments_above_fields(cls: type) -> dict[str, str]:
    """The ``#:`` comment lines right above each field of ``cls`` in its source."""
    source, _ = inspect.getsourcelines(cls)
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in source:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"([a-z_][a-z0-9_]*)\s*:", stripped)
        if match and pending:
            out[match.group(1)] = " ".join(pending)
        pending = []
    return out


def _rst_to_md(text: str) -> str:
    """Docstring text (reStructuredText roles and double backticks) as Markdown."""
    text = re.sub(r":(?:class|attr|func|meth|mod|data|exc):`~?\.?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell.replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


Problems = list[str]


# ---------------------------------------------------------------------------- the tables


def messagebus_config(problems: Problems) -> str:
    """Every ``MessageBusConfig`` field: type, default, meaning."""
    from AgentOperatingSystem.config.messagebus import MessageBusConfig

    comments = _comments_above_fields(MessageBusConfig)
    rows = []
    names = {f.name for f in dataclasses.fields(MessageBusConfig)}
    for f in dataclasses.fields(MessageBusConfig):
        text = comments.get(f.name) or BUS_FIELDS.get(f.name)
        if not text:
            problems.append(f"MessageBusConfig.{f.name} has no description (add a #: comment)")
            text = ""
        rows.append([f"`{f.name}`", _type_text(f.type), _default_text(f), text])
    for stale in sorted(set(BUS_FIELDS) - names):
        problems.append(f"BUS_FIELDS describes {stale!r}, which MessageBusConfig no longer has")
    return _table(["field", "type", "default", "meaning"], rows)


def network_config(problems: Problems) -> str:
    """Every flat setting of ``NetworkConfig``, grouped, with each group's docstring."""
    from AgentOperatingSystem.config import network
    from AgentOperatingSystem.config.forwarding import Forwarded

    flat: dict[str, list[tuple[str, str]]] = {}
    for name, value in vars(network.NetworkConfig).items():
        if isinstance(value, Forwarded):
            flat.setdefault(value.part, []).append((name, value.attribute))
    parts = []
    for group_name, cls in network._GROUPS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        rows = []
        for name, attribute in flat.get(group_name, []):
            f = fields.get(attribute)
            if f is None:
                problems.append(f"NetworkConfig.{name} forwards to a missing {attribute!r}")
                continue
            where = f"`{group_name}.{attribute}`"
            rows.append([f"`{name}`", where, _type_text(f.type), _default_text(f)])
        unexposed = set(fields) - {a for _, a in flat.get(group_name, [])}
        for attribute in sorted(unexposed):
            f = fields[attribute]
            where = f"`{group_name}.{attribute}`"
            rows.append(["(group only)", where, _type_text(f.type), _default_text(f)])
        doc = _rst_to_md(inspect.cleandoc(cls.__doc__ or ""))
        if not doc:
            problems.append(f"{cls.__name__} has no docstring")
        parts.append(
            f"### `{group_name}`: {cls.__name__}\n\n{doc}\n\n"
            + _table(["keyword", "setting", "type", "default"], rows)
        )
    return "\n\n".join(parts)


def engine_urls(problems: Problems) -> str:
    """The URL schemes and every query option of the engines."""
    from AgentOperatingSystem.config.urls import NATS_SCHEMES, NATS_URL_OPTIONS
    from AgentOperatingSystem.messaging.brokers.sqlite import url as sqlite_url

    accepted = {("sqlite", o) for o in sqlite_url._KNOWN} | {("nats", o) for o in NATS_URL_OPTIONS}
    for missing in sorted(accepted - set(URL_OPTIONS)):
        problems.append(f"engine URL option {missing} has no description in URL_OPTIONS")
    for stale in sorted(set(URL_OPTIONS) - accepted):
        problems.append(f"URL_OPTIONS describes {stale}, which no engine accepts")
    schemes = _table(
        ["URL", "engine"],
        [
            ["`memory://`", "in-process queues (tests, one process)"],
            ["`sqlite:///relative.db`, `sqlite:////absolute.db`", "one SQLite file (WAL)"],
            *[
                [f"`{s}://host:port`", "NATS JetStream" + (" (plain)" if s == "nats" else "")]
                for s in NATS_SCHEMES
            ],
        ],
    )
    rows = [
        [engine, f"`{option}`", f"`{default}`", meaning]
        for (engine, option), (default, meaning) in sorted(URL_OPTIONS.items())
        if (engine, option) in accepted
    ]
    return schemes + "\n\n" + _table(["engine", "option", "default", "meaning"], rows)


def error_tree(problems: Problems) -> str:
    """The exception tree under ``MessagingError``, with each class's first docstring line."""
    from AgentOperatingSystem.messaging import errors

    root = errors.MessagingError
    lines: list[str] = []

    def walk(cls: type, depth: int) -> None:
        extra = [
            b.__name__ for b in cls.__bases__ if not issubclass(b, root) and b is not Exception
        ]
        doc = (cls.__doc__ or "").strip().splitlines()
        if not doc:
            problems.append(f"{cls.__name__} has no docstring")
        also = f" (also `{'`, `'.join(extra)}`)" if extra else ""
        text = _rst_to_md(doc[0]) if doc else ""
        lines.append("    " * depth + f"- `{cls.__name__}`{also}: {text}")
        for sub in sorted(cls.__subclasses__(), key=lambda c: c.__name__):
            if sub.__module__ == root.__module__ and sub.__bases__[0] is cls:
                walk(sub, depth + 1)

    walk(root, 0)
    return "\n".join(lines)


def metric_families(problems: Problems) -> str:
    """The Prometheus families of a bus with metrics on, read from a live in-memory bus."""
    from AgentOperatingSystem.messaging import MessageBus, MessageBusConfig, MessageType
    from AgentOperatingSystem.messaging.observability.bus_telemetry import telemetry_for

    async def render() -> str:
        config = MessageBusConfig(
            broker_url="memory://", enable_metrics=True, metrics_sample_every=1
        )
        async with MessageBus(config) as bus:
            await bus.subscribe("cfo_agent", [MessageType.QUERY], lambda m: {"ok": True})
            await bus.request(recipient_id="cfo_agent", content={}, timeout=10)
            tel = telemetry_for(bus)
            assert tel is not None
            await tel.sample(bus)
            return tel.registry.render()

    text = asyncio.run(render())
    kinds = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    if not kinds:
        problems.append("a bus with enable_metrics=True rendered no metric family")
    rows = []
    for name, kind in kinds.items():
        labels = sorted(
            set(re.findall(r'(\w+)="', " ".join(re.findall(rf"^{name}\w*\{{(.*)\}}", text, re.M))))
            - {"le"}
        )
        shown = name + ("_bucket/_sum/_count" if kind == "histogram" else "")
        rows.append([f"`{shown}`", kind, ", ".join(f"`{x}`" for x in labels), helps.get(name, "")])
    return _table(["metric", "type", "labels", "meaning"], rows)


def cli_help(problems: Problems) -> str:
    """Every command's ``--help``, as the command prints it."""
    from AgentOperatingSystem.messaging.cli import main
    from AgentOperatingSystem.messaging.cli.parser import COMMANDS

    paths: list[list[str]] = [[]]
    for command in COMMANDS:
        paths.append([command.name])
        paths += [[command.name, action.name] for action in command.actions]
    parts = []
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "96"
    try:
        for path in paths:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                main([*path, "--help"])
            title = " ".join(["aos-messaging", *path])
            if not out.getvalue().startswith("usage:"):
                problems.append(f"`{title} --help` printed no usage")
            parts.append(f"### `{title}`\n\n```text\n{out.getvalue().rstrip()}\n```")
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n\n".join(parts)


TABLES: dict[str, Callable[[Problems], str]] = {
    "messagebus-config": messagebus_config,
    "network-config": network_config,
    "engine-urls": engine_urls,
    "error-tree": error_tree,
    "metrics": metric_families,
    "cli": cli_help,
}
"""Every table a page may ask for, by marker name."""


def expand(markdown: str, problems: Problems) -> str:
    """``markdown`` with every ``<!-- aos:NAME -->`` marker replaced by its table."""

    def replace(match: re.Match[str]) -> str:
        make = TABLES.get(match.group(1))
        if make is None:
            problems.append(f"unknown table marker {match.group(0)!r}")
            return match.group(0)
        return make(problems)

    return MARKER.sub(replace, markdown)


# ---------------------------------------------------------------------------- mkdocs


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """mkdocs hook: expand the table markers of a page; report every problem found."""
    problems: Problems = []
    out = expand(markdown, problems)
    for problem in problems:
        log.warning("%s: %s", page.file.src_uri, problem)
    return out
