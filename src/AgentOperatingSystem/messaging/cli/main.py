"""``aos-messaging``: the command line of AOS Messaging.

::

    aos-messaging demo                         the multi-agent walk-through (SQLite)
    aos-messaging serve [--broker-url URL] [--host H] [--port P]
                                               a node: bus + network + dashboard + /metrics
    aos-messaging send --to AGENT --type TYPE [--content JSON] [--count N]
    aos-messaging request --to AGENT [--content JSON] [--timeout S]
    aos-messaging tail [--agent A] [--type T] [--count N]
    aos-messaging queues
    aos-messaging dlq list|show|resubmit|purge ...
    aos-messaging conversations list|show ...
    aos-messaging bench [--quick] [--only NAMES]

Every command but ``demo``, ``serve`` and ``bench`` talks to a running node over HTTP (its
``/admin`` API): ``--node URL`` (default ``$AOS_NODE_URL``, else ``http://127.0.0.1:8080``)
and ``--token`` (default ``$AOS_ADMIN_TOKEN``). ``--json`` prints machine-readable output.

Exit codes: 0 success; 1 an error (the node is unreachable, refused the request, a request
timed out, nothing matched); 2 wrong usage (unknown command or option, missing argument);
130 interrupted with Ctrl-C (except ``tail`` and ``serve``, for which Ctrl-C is the normal way
to stop: 0). Errors are printed on stderr as ``aos-messaging: error: <message>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

__all__ = ["CLIError", "Node", "Progress", "build_parser", "main"]

PROG = "aos-messaging"
DEFAULT_NODE = "http://127.0.0.1:8080"
NODE_ENV = "AOS_NODE_URL"
TOKEN_ENV = "AOS_ADMIN_TOKEN"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CLIError(Exception):
    """An error reported to the user as ``aos-messaging: error: ...`` with exit code 1
    (or ``code``)."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------- output


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal; elsewhere (a pipe, a log)
    one summary line at the end, so logs stay readable."""

    def __init__(
        self, total: int, label: str, *, stream: IO[str] | None = None, enabled: bool = True
    ) -> None:
        self.total = max(0, total)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = 0
        self.failed = 0
        self._live = enabled and self.stream.isatty()
        self._started = time.monotonic()
        self._last = 0.0

    def advance(self, n: int = 1, *, failed: bool = False) -> None:
        """Count ``n`` items as done (``failed``: done, but with an error)."""
        self.done += n
        if failed:
            self.failed += n
        now = time.monotonic()
        if self._live and (now - self._last >= 0.05 or self.done >= self.total):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        width = 30
        frac = self.done / self.total if self.total else 1.0
        filled = int(width * frac)
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar with a summary line."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._started
        if self._live:
            self._draw()
            self.stream.write("\n")
        extra = f", {self.failed} failed" if self.failed else ""
        self.stream.write(f"{self.label}: {self.done}/{self.total} done{extra} in {elapsed:.2f}s\n")
        self.stream.flush()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _table(rows: list[list[str]], head: list[str]) -> str:
    lines = [head, *rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines
    )


def _clip(text: Any, width: int) -> str:
    s = "" if text is None else str(text).replace("\n", " ")
    return s if len(s) <= width else s[: width - 1] + "…"


# ---------------------------------------------------------------------------- HTTP client


class _Client:
    """A small synchronous client of the node's ``/admin`` API."""

    def __init__(self, node: str, token: str | None, timeout: float = 30.0) -> None:
        node = node.rstrip("/")
        parts = urllib.parse.urlsplit(node)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CLIError(f"--node must be an http(s) URL such as {DEFAULT_NODE}, not {node!r}")
        self.node = node
        self.token = token
        self.timeout = timeout

    def _request(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.node + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        return req

    def open(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Send a request; return the open response (raises CLIError on failure)."""
        req = self._request(method, path, body)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise CLIError(self._http_error(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CLIError(
                f"cannot reach the node at {self.node}: {reason}"
                f" (is `{PROG} serve` running? set --node or ${NODE_ENV})"
            ) from None

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> Any:
        """Send a request and return its JSON answer."""
        with self.open(method, path, body, timeout=timeout) as resp:
            raw = resp.read()
        try:
            return json.loads(raw)
        except ValueError:
            raise CLIError(f"the node answered {path} with something that is not JSON") from None

    @staticmethod
    def _http_error(exc: urllib.error.HTTPError) -> str:
        try:
            payload = json.loads(exc.read())
            err = payload.get("error")
            if isinstance(err, dict):
                return str(err.get("message") or err.get("code") or exc.reason)
        except (ValueError, AttributeError):
            pass
        return f"the node answered HTTP {exc.code} {exc.reason}"


def _client(args: argparse.Namespace) -> _Client:
    return _Client(args.node, args.token)


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _parse_content(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    if text == "-":
        text = sys.stdin.read()
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}


# ---------------------------------------------------------------------------- commands


def cmd_queues(args: argparse.Namespace) -> int:
    data = _client(args).call("GET", "/admin/queues" + ("?all=1" if args.all else ""))
    if args.json:
        _print_json(data)
        return EXIT_OK
    rows = [
        [q["agent"], str(q["depth"]), str(q["dead_letters"]), "yes" if q["subscribed"] else ""]
        for q in data["queues"]
    ]
    if not rows:
        print("no queues")
        return EXIT_OK
    print(_table(rows, ["AGENT", "DEPTH", "DEAD", "CONSUMER"]))
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    client = _client(args)
    content = _parse_content(args.content)
    body: dict[str, Any] = {
        "message_type": args.type,
        "content": content,
        "sender_id": args.sender,
        "priority": args.priority,
        "recipient_id": args.to,
        "correlation_id": args.correlation_id,
        "ttl": args.ttl,
    }
    if args.metadata:
        meta = _parse_content(args.metadata)
        body["metadata"] = meta
    results = []
    progress = Progress(args.count, "sending", enabled=args.count > 1)
    for _ in range(args.count):
        results.append(client.call("POST", "/admin/send", body))
        progress.advance()
    progress.finish()
    if args.json:
        _print_json(results if args.count > 1 else results[0])
        return EXIT_OK
    for r in results:
        to = ", ".join(r["recipients"]) or "(no queue)"
        note = " (duplicate, not enqueued)" if r.get("duplicate") else ""
        print(f"{r['message_id']} -> {to}{note}")
    return EXIT_OK


def cmd_request(args: argparse.Namespace) -> int:
    body = {
        "recipient_id": args.to,
        "content": _parse_content(args.content),
        "timeout": args.timeout,
        "sender_id": args.sender,
        "message_type": args.type,
    }
    data = _client(args).call("POST", "/admin/request", body, timeout=args.timeout + 10)
    response = data["response"]
    _print_json(response if args.json else response["content"])
    return EXIT_OK


def _format_event(event: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("time", time.time()))))
    kind = event.get("event", "?")
    mid = str(event.get("message_id") or "")[:8]
    mt = event.get("message_type", "")
    if kind == "published":
        where = ",".join(event.get("queues") or []) or event.get("recipient") or "?"
        text = f"{mt} {event.get('sender')} -> {where} {event.get('content', '')}"
    elif kind == "handled":
        state = "ok" if event.get("ok") else f"FAILED {event.get('error')}"
        text = f"{mt} by {event.get('agent')} attempt {event.get('attempt')} {state}"
        text += f" ({event.get('duration_ms')} ms)"
    elif kind == "dropped":
        text = f"{event.get('count')} events dropped (too slow)"
    else:
        text = f"{mt} in {event.get('agent')}"
    return f"{stamp} {kind:<13} {mid:<8} {text}".rstrip()


def cmd_tail(args: argparse.Namespace) -> int:
    client = _client(args)
    query = {k: v for k, v in (("agent", args.agent), ("type", args.type)) if v}
    path = "/admin/tail" + ("?" + urllib.parse.urlencode(query) if query else "")
    # No read timeout: the node sends a comment every 15 s; allow for three missed ones.
    resp = client.open("GET", path, timeout=60)
    print(f"following {client.node} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    seen = 0
    try:
        with resp:
            data: list[str] = []
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                    continue
                if line or not data:
                    continue
                try:
                    event = json.loads("\n".join(data))
                except ValueError:
                    event = {"event": "unparsable", "raw": "\n".join(data)}
                data = []
                print(json.dumps(event) if args.json else _format_event(event), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    return EXIT_OK
    except TimeoutError:
        raise CLIError("the node stopped sending (no heartbeat for 60 s)") from None
    except OSError as exc:
        raise CLIError(f"the stream from {client.node} broke: {exc}") from None
    raise CLIError("the node closed the stream (was it stopped?)")


def cmd_dlq_list(args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit)}
    if args.agent:
        query["agent"] = args.agent
    data = _client(args).call("GET", "/admin/dlq?" + urllib.parse.urlencode(query))
    letters = data["dead_letters"]
    if args.json:
        _print_json(letters)
        return EXIT_OK
    if not letters:
        print("no dead letters")
        return EXIT_OK
    rows = [
        [
            d["agent"],
            d["message_id"],
            d["message_type"],
            str(d.get("reason") or ""),
            str(d.get("attempts") if d.get("attempts") is not None else ""),
            _clip(d.get("error"), 60),
        ]
        for d in letters
    ]
    print(_table(rows, ["AGENT", "MESSAGE_ID", "TYPE", "REASON", "ATTEMPTS", "LAST_ERROR"]))
    return EXIT_OK


def cmd_dlq_show(args: argparse.Namespace) -> int:
    data = _client(args).call("GET", f"/admin/dlq/{_q(args.agent)}/{_q(args.message_id)}")
    _print_json(data)
    return EXIT_OK


def cmd_dlq_resubmit(args: argparse.Namespace) -> int:
    client = _client(args)
    ids: list[str] = list(args.message_ids)
    if args.all:
        if ids:
            raise CLIError("give message ids or --all, not both", EXIT_USAGE)
        query = urllib.parse.urlencode({"agent": args.agent, "limit": "10000"})
        ids = [d["message_id"] for d in client.call("GET", f"/admin/dlq?{query}")["dead_letters"]]
    elif not ids:
        raise CLIError("give one or more message ids, or --all", EXIT_USAGE)
    progress = Progress(len(ids), f"resubmitting to {args.agent}", enabled=len(ids) > 1)
    errors: list[str] = []
    for mid in ids:
        try:
            client.call("POST", f"/admin/dlq/{_q(args.agent)}/{_q(mid)}/resubmit", {})
            progress.advance()
        except CLIError as exc:
            errors.append(f"{mid}: {exc}")
            progress.advance(failed=True)
    progress.finish()
    done = len(ids) - len(errors)
    if args.json:
        _print_json({"agent": args.agent, "resubmitted": done, "errors": errors})
    else:
        print(f"resubmitted {done} dead letter(s) to {args.agent}")
    for err in errors:
        print(f"{PROG}: error: {err}", file=sys.stderr)
    return EXIT_ERROR if errors else EXIT_OK


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CLIError(
                f"refusing to purge the dead letters of {args.agent!r} without --yes", EXIT_USAGE
            )
        answer = input(f"Delete every dead letter of {args.agent!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing purged")
            return EXIT_OK
    data = _client(args).call("POST", f"/admin/dlq/{_q(args.agent)}/purge", {})
    if args.json:
        _print_json(data)
    else:
        print(f"purged {data['purged']} dead letter(s) from {args.agent}")
    return EXIT_OK


def cmd_conversations_list(args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("state", args.state), ("participant", args.participant)) if v}
    path = "/admin/conversations" + ("?" + urllib.parse.urlencode(query) if query else "")
    data = _client(args).call("GET", path)
    if not data.get("available", True):
        raise CLIError("this node has no conversation storage")
    convs = data["conversations"]
    if args.json:
        _print_json(convs)
        return EXIT_OK
    if not convs:
        print("no conversations")
        return EXIT_OK
    rows = [
        [
            c["conversation_id"],
            _clip(c.get("topic"), 30),
            str(c.get("state")),
            str(c.get("message_count")),
            ",".join(c.get("participants") or []),
        ]
        for c in convs
    ]
    print(_table(rows, ["ID", "TOPIC", "STATE", "TURNS", "PARTICIPANTS"]))
    return EXIT_OK


def cmd_conversations_show(args: argparse.Namespace) -> int:
    path = f"/admin/conversations/{_q(args.conversation_id)}?limit={args.limit}"
    data = _client(args).call("GET", path)
    if args.json:
        _print_json(data)
        return EXIT_OK
    c = data["conversation"]
    print(f"{c['conversation_id']}  {c.get('topic')!r}  {c.get('state')}")
    print(f"participants: {', '.join(c.get('participants') or [])}")
    print(
        f"started {c.get('started_at')}" + (f", ended {c['ended_at']}" if c.get("ended_at") else "")
    )
    for turn in data["history"]:
        content = turn.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        print(f"[{turn['sequence']}] {turn['sender_id']} ({turn['message_type']}): {text}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from ..demo import main as demo_main
    except ImportError as exc:
        raise CLIError(f"the demo is not available in this installation: {exc}") from None
    argv: list[str] = []
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    return int(demo_main(argv) or 0)


def _find_benchmarks(root: Path | None) -> Path | None:
    """The source checkout holding ``benchmarks/run.py``: ``root`` when given, else the
    current directory or one above it, else the checkout this package was installed from."""
    if root is not None:
        return root if (root / "benchmarks" / "run.py").is_file() else None
    cwd = Path.cwd().resolve()
    for candidate in [cwd, *cwd.parents, *Path(__file__).resolve().parents]:
        if (candidate / "benchmarks" / "run.py").is_file():
            return candidate
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    root = _find_benchmarks(Path(args.root).resolve() if args.root else None)
    if root is None:
        raise CLIError(
            "benchmarks/run.py not found"
            + (f" in {args.root}" if args.root else "")
            + ": run this from a source checkout of aos-messaging (or pass --root)"
        )
    cmd = [sys.executable, "-m", "benchmarks.run"]
    if args.quick:
        cmd.append("--quick")
    if args.only:
        cmd += ["--only", args.only]
    if args.json_only:
        cmd.append("--json-only")
    print(f"running {' '.join(cmd[1:])} in {root}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    try:
        return subprocess.call(cmd, cwd=root, env=env)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------- serve


@dataclass
class _ServeOptions:
    broker_url: str | None
    data_dir: str | None
    storage_url: str | None
    host: str
    port: int
    token: str | None
    auth_secret: str | None
    allow_unsigned: bool
    node_id: str | None
    tracing: bool
    trace_console: bool


class Node:
    """A node as ``aos-messaging serve`` runs it: a :class:`MessageBus` (metrics on), a
    :class:`~AgentOperatingSystem.messaging.network.node.NetworkProtocol` serving HTTP,
    the dashboard and ``/admin`` API, and ``/metrics``.

    ``async with Node(broker_url="sqlite:///x.db", port=0) as node: print(node.url)``
    """

    def __init__(
        self,
        *,
        broker_url: str | None = None,
        data_dir: str | None = None,
        storage_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
        auth_secret: str | None = None,
        allow_unsigned: bool = False,
        node_id: str | None = None,
        tracing: bool = False,
        poll_interval: float | None = None,
    ) -> None:
        from ...config.messagebus import MessageBusConfig
        from ...config.network import NetworkConfig
        from ...storage.manager import StorageManager
        from ..core.bus import MessageBus
        from ..network.node import NetworkProtocol

        extra: dict[str, Any] = {}
        if data_dir:
            extra["data_dir"] = data_dir
        if poll_interval is not None:
            extra["poll_interval"] = poll_interval
        self.config = MessageBusConfig(
            broker_url=broker_url, enable_metrics=True, enable_tracing=tracing, **extra
        )
        self.storage = StorageManager(storage_url or self.config.resolved_storage_url())
        self.bus = MessageBus(self.config, storage=self.storage)
        net: dict[str, Any] = {"host": host, "port": port, "allow_unsigned": allow_unsigned}
        if auth_secret is not None:
            net["auth_secret"] = auth_secret
        if node_id is not None:
            net["node_id"] = node_id
        self.protocol = NetworkProtocol(NetworkConfig(**net), self.bus, storage=self.storage)
        self.token = token
        self._installed = False

    @property
    def url(self) -> str:
        """The node's HTTP address (after :meth:`start`)."""
        return self.protocol.url

    async def start(self) -> Node:
        """Start the bus, add the dashboard, admin API and /metrics, and serve."""
        from ..observability.telemetry import install_metrics
        from ..web.dashboard import install_dashboard

        await self.bus.start()
        if not self._installed:
            install_metrics(self.protocol.app, self.bus)
            install_dashboard(
                self.protocol.app,
                self.bus,
                self.storage,
                token=self.token,
                node_info={"node_id": self.protocol.node_id},
            )
            self._installed = True
        try:
            await self.protocol.start()
        except BaseException:
            await self.bus.stop()
            await self.storage.close()
            raise
        return self

    async def stop(self) -> None:
        """Stop serving, then the bus, then the storage."""
        await self.protocol.stop()
        await self.bus.stop()
        await self.storage.close()

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _setup_console_tracing() -> Callable[[], None]:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        raise CLIError(
            "--trace-console needs the OpenTelemetry SDK: pip install 'aos-messaging[otel]'"
        ) from None
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)
    return provider.shutdown


async def _serve(opts: _ServeOptions) -> int:
    from ..errors import MessagingError

    try:
        node = Node(
            broker_url=opts.broker_url,
            data_dir=opts.data_dir,
            storage_url=opts.storage_url,
            host=opts.host,
            port=opts.port,
            token=opts.token,
            auth_secret=opts.auth_secret,
            allow_unsigned=opts.allow_unsigned,
            node_id=opts.node_id,
            tracing=opts.tracing or opts.trace_console,
        )
        await node.start()
    except MessagingError as exc:
        raise CLIError(str(exc)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = node.url
        print(f"{PROG} node listening on {url}", flush=True)
        print(f"  node id    {node.protocol.node_id}", flush=True)
        print(f"  engine     {node.config.resolved_broker_url()}", flush=True)
        print(f"  storage    {node.storage.url}", flush=True)
        print(f"  dashboard  {url}/dashboard/", flush=True)
        print(f"  metrics    {url}/metrics", flush=True)
        if opts.host not in ("127.0.0.1", "localhost", "::1") and not opts.token:
            print(
                f"warning: the dashboard and /admin API on {opts.host} are open to anyone who"
                " can reach this port; set --token (or $AOS_ADMIN_TOKEN)",
                file=sys.stderr,
                flush=True,
            )
        print("Ctrl-C to stop", file=sys.stderr, flush=True)
        await stop.wait()
        print("stopping ...", file=sys.stderr, flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await node.stop()
    print("stopped", file=sys.stderr, flush=True)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    shutdown: Callable[[], None] | None = None
    if args.trace_console:
        shutdown = _setup_console_tracing()
    opts = _ServeOptions(
        broker_url=args.broker_url,
        data_dir=args.data_dir,
        storage_url=args.storage_url,
        host=args.host,
        port=args.port,
        token=args.token,
        auth_secret=args.auth_secret,
        allow_unsigned=args.allow_unsigned,
        node_id=args.node_id,
        tracing=args.tracing,
        trace_console=args.trace_console,
    )
    try:
        return asyncio.run(_serve(opts))
    finally:
        if shutdown is not None:
            shutdown()


# ---------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with our exit code for usage errors (2) and a hint."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("a port is 0..65535 (0: any free port)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``aos-messaging`` (every command has ``--help``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("aos-messaging")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        ver = "unknown"

    remote = _Parser(add_help=False)
    group = remote.add_argument_group("node")
    group.add_argument(
        "--node",
        default=os.environ.get(NODE_ENV) or DEFAULT_NODE,
        metavar="URL",
        help=f"the node's address (default: ${NODE_ENV} or {DEFAULT_NODE})",
    )
    group.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"the node's admin token (default: ${TOKEN_ENV})",
    )
    group.add_argument("--json", action="store_true", help="print JSON")

    parser = _Parser(
        prog=PROG,
        description="AOS Messaging: run a node, talk to it, inspect queues and dead letters.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted. "
        f"Run `{PROG} <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {ver}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "demo",
        help="run the multi-agent demo (embedded SQLite)",
        description="Run the multi-agent walk-through on the embedded SQLite engine.",
    )
    p.add_argument("--data-dir", help="where the demo's SQLite files go (default .aos/demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "serve",
        help="run a node (bus, network, dashboard, /metrics)",
        description="Run a node until Ctrl-C or SIGTERM: the bus on the given engine, the "
        "network endpoints (node-to-node and A2A), the dashboard at /dashboard/, the admin "
        "API at /admin/ and Prometheus metrics at /metrics.",
    )
    p.add_argument(
        "--broker-url",
        "--engine",
        dest="broker_url",
        metavar="URL",
        help="engine URL: memory://, sqlite:///path.db, nats://host:4222 "
        "(default: SQLite in --data-dir)",
    )
    p.add_argument(
        "--data-dir",
        help="data directory for the default SQLite engine (default: $AOS_DATA_DIR or ./.aos)",
    )
    p.add_argument(
        "--storage-url",
        metavar="URL",
        help="StorageManager URL for conversations and the agent registry "
        "(default: beside the engine's database)",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"require this admin token for /admin and the dashboard (default: ${TOKEN_ENV})",
    )
    p.add_argument(
        "--auth-secret",
        default=None,
        help="shared secret for node-to-node requests (default: $AOS_NETWORK_SECRET)",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="accept unsigned node-to-node requests (local development only)",
    )
    p.add_argument("--node-id", help="this node's id (default: random)")
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level on stderr (default warning)",
    )
    p.add_argument(
        "--tracing",
        action="store_true",
        help="create OpenTelemetry spans (exported by the configured SDK provider)",
    )
    p.add_argument(
        "--trace-console",
        action="store_true",
        help="print every span as JSON on stderr (needs opentelemetry-sdk)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "send",
        parents=[remote],
        help="publish a message through a node",
        description="Publish a message on the node's bus.",
    )
    p.add_argument("--to", help="recipient agent (omit for an event that fans out)")
    p.add_argument(
        "--type",
        default="task",
        help="message type: task, query, event, command, status, notification, "
        "response, error (default task)",
    )
    p.add_argument("--content", help="JSON object (or plain text, or - for stdin)")
    p.add_argument("--sender", default="aos-cli", help="sender id (default aos-cli)")
    p.add_argument(
        "--priority", default=None, help="CRITICAL, HIGH, NORMAL, LOW, BACKGROUND or 0-4"
    )
    p.add_argument("--correlation-id", default=None)
    p.add_argument("--ttl", type=_positive_int, default=None, help="seconds to live")
    p.add_argument("--metadata", default=None, help="JSON object of metadata")
    p.add_argument(
        "--count", type=_positive_int, default=1, help="send it N times (progress on stderr)"
    )
    p.set_defaults(func=cmd_send)

    p = sub.add_parser(
        "request",
        parents=[remote],
        help="send a request and print the response",
        description="Send a request (QUERY by default) and wait for the response.",
    )
    p.add_argument("--to", required=True, help="the agent to ask")
    p.add_argument("--content", help="JSON object (or plain text, or - for stdin)")
    p.add_argument("--timeout", type=_positive_float, default=30.0, help="seconds (default 30)")
    p.add_argument("--sender", default="aos-cli", help="sender id (default aos-cli)")
    p.add_argument("--type", default="query", help="query, task or command (default query)")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser(
        "tail",
        parents=[remote],
        help="follow messages live",
        description="Follow what the node's bus publishes, delivers and settles.",
    )
    p.add_argument("--agent", help="only events of this agent")
    p.add_argument("--type", help="only this message type")
    p.add_argument("--count", type=_positive_int, default=None, help="stop after N events")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser(
        "queues",
        parents=[remote],
        help="list queues with their depths",
        description="List the agents' queues with depth and dead letters.",
    )
    p.add_argument("--all", action="store_true", help="include internal queues (_reply.*, ...)")
    p.set_defaults(func=cmd_queues)

    dlq = sub.add_parser(
        "dlq",
        help="the dead-letter queue: list, show, resubmit, purge",
        description="Inspect and repair dead letters.",
    )
    dsub = dlq.add_subparsers(dest="dlq_command", metavar="<action>", parser_class=_Parser)
    dsub.required = True
    p = dsub.add_parser(
        "list",
        parents=[remote],
        help="list dead letters",
        description="List dead letters with reason and last error.",
    )
    p.add_argument("--agent", help="only this agent's")
    p.add_argument("--limit", type=_positive_int, default=100)
    p.set_defaults(func=cmd_dlq_list)
    p = dsub.add_parser(
        "show",
        parents=[remote],
        help="show one dead letter in full",
        description="Print one dead letter as JSON.",
    )
    p.add_argument("agent")
    p.add_argument("message_id")
    p.set_defaults(func=cmd_dlq_show)
    p = dsub.add_parser(
        "resubmit",
        parents=[remote],
        help="put dead letters back into their queue",
        description="Put dead letters back into the agent's queue (attempts reset).",
    )
    p.add_argument("agent")
    p.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
    p.add_argument("--all", action="store_true", help="every dead letter of the agent")
    p.set_defaults(func=cmd_dlq_resubmit)
    p = dsub.add_parser(
        "purge",
        parents=[remote],
        help="delete an agent's dead letters",
        description="Delete every dead letter of an agent.",
    )
    p.add_argument("agent")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_dlq_purge)

    conv = sub.add_parser(
        "conversations",
        help="list and show conversations",
        description="Conversations stored on the node.",
    )
    csub = conv.add_subparsers(dest="conv_command", metavar="<action>", parser_class=_Parser)
    csub.required = True
    p = csub.add_parser(
        "list",
        parents=[remote],
        help="list conversations",
        description="List conversations (oldest first).",
    )
    p.add_argument("--state", choices=["active", "ended"])
    p.add_argument("--participant")
    p.set_defaults(func=cmd_conversations_list)
    p = csub.add_parser(
        "show",
        parents=[remote],
        help="show a conversation with its turns",
        description="Print a conversation and its turns.",
    )
    p.add_argument("conversation_id")
    p.add_argument("--limit", type=_positive_int, default=500, help="last N turns (default 500)")
    p.set_defaults(func=cmd_conversations_show)

    p = sub.add_parser(
        "bench",
        help="run the benchmarks (source checkout)",
        description="Run benchmarks/run.py: every scenario beside its baseline.",
    )
    p.add_argument("--quick", action="store_true", help="smaller runs")
    p.add_argument("--only", help="comma-separated scenario modules (e.g. core,observability)")
    p.add_argument("--json-only", action="store_true", help="only the JSON lines")
    p.add_argument("--root", help="the source checkout holding benchmarks/ (default: search)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``aos-messaging``; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        if args.command in ("tail", "serve"):
            return EXIT_OK
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into e.g. `head`: stop quietly.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
