"""``aos-messaging serve``: a :class:`Node` (bus, network node, dashboard, ``/metrics``)
that runs until Ctrl-C or SIGTERM.

Access: ``--token`` protects the dashboard, ``/admin`` and ``/metrics`` (``Authorization:
Bearer <token>``; ``--metrics-public`` leaves ``/metrics`` open for a scraper that sends no
credentials); ``--a2a-token`` protects the A2A JSON-RPC endpoints (agent cards stay public);
``--auth-secret`` signs node-to-node requests. At start, each surface left open on a host
other than loopback is logged as one WARNING (:func:`open_surfaces`), and so is
``--allow-unsigned`` on any host.

The bus, network and web modules are imported when a node is built, not when the command
line starts, so ``aos-messaging --help`` and the remote commands stay quick.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import logging
import signal
import sys
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .output import EXIT_OK, PROG, CLIError

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["Node", "cmd_serve", "is_loopback", "open_surfaces"]

log = logging.getLogger("aos.messaging.cli")
METRICS_PATH = "/metrics"


def is_loopback(host: str) -> bool:
    """True when ``host`` is only reachable from this machine (``localhost``, 127.0.0.0/8,
    ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class _ServeOptions:
    """What ``serve`` was asked for: the keyword arguments of :class:`Node` (the fields have
    their names) and ``trace_console``."""

    broker_url: str | None
    data_dir: str | None
    storage_url: str | None
    host: str
    port: int
    token: str | None
    metrics_public: bool
    a2a_token: str | None
    auth_secret: str | None
    allow_unsigned: bool
    node_id: str | None
    tracing: bool
    trace_console: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _ServeOptions:
        """The options as the command line parsed them (the fields' names are its dests)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def node_options(self) -> dict[str, Any]:
        """:class:`Node`'s keyword arguments (``--trace-console`` turns tracing on too)."""
        options = asdict(self)
        del options["trace_console"]
        options["tracing"] = self.tracing or self.trace_console
        return options


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
        metrics_public: bool = False,
        a2a_token: str | None = None,
        auth_secret: str | None = None,
        allow_unsigned: bool = False,
        node_id: str | None = None,
        tracing: bool = False,
        poll_interval: float | None = None,
    ) -> None:
        from ...config.messagebus import MessageBusConfig
        from ...config.network import NetworkConfig
        from ...storage.manager import StorageManager
        from ..conversation_system import ConversationSystem
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
        if a2a_token:
            net["a2a_auth_token"] = a2a_token
        # A2A contexts are the conversation system's conversations (their turns recorded)
        self.conversations = ConversationSystem(self.storage)
        self.protocol = NetworkProtocol(
            NetworkConfig(**net), self.bus, storage=self.storage, conversations=self.conversations
        )
        self.token = token
        #: ``/metrics`` without the token
        self.metrics_public = metrics_public
        self._installed = False

    @property
    def url(self) -> str:
        """The node's HTTP address (after :meth:`start`)."""
        return self.protocol.url

    async def start(self) -> Node:
        """Start the bus, add the dashboard, admin API and /metrics, and serve."""
        from ..observability.http import install_metrics
        from ..web.dashboard import install_dashboard

        await self.bus.start()
        if not self._installed:
            if self.token and not self.metrics_public:
                self.protocol.app.middlewares.append(_metrics_guard(self.token))
            install_metrics(self.protocol.app, self.bus, path=METRICS_PATH)
            install_dashboard(
                self.protocol.app,
                self.bus,
                self.conversations,
                token=self.token,
                node_info={"node_id": self.protocol.node_id},
                tasks=self.protocol.tasks,
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


_Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


def _metrics_guard(token: str) -> Any:
    """A middleware that answers ``/metrics`` only with ``Authorization: Bearer <token>``."""
    from aiohttp import web

    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path == METRICS_PATH:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": {"code": "unauthorized", "message": "missing or wrong token"}},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    return guard


def open_surfaces(opts: _ServeOptions) -> list[str]:
    """One warning per surface ``serve`` leaves open: ``--allow-unsigned`` (on any host),
    and on a host other than loopback the A2A endpoints without ``--a2a-token``, the
    dashboard and ``/admin`` without ``--token``, ``/metrics`` without ``--token`` or
    with ``--metrics-public``."""
    where = f"{opts.host}:{opts.port}"
    out: list[str] = []
    if opts.allow_unsigned:
        out.append(
            f"--allow-unsigned: node-to-node messages on {where} are accepted without a"
            " signature, from anyone who can reach the port (local development only)"
        )
    if is_loopback(opts.host):
        return out
    if not opts.a2a_token:
        out.append(
            f"the A2A endpoints on {where} are open to anyone who can reach the port: any"
            " client can call every hosted agent; set --a2a-token (or $AOS_A2A_TOKEN)"
        )
    if not opts.token:
        out.append(
            f"the dashboard and /admin API on {where} are open to anyone who can reach the"
            " port; set --token (or $AOS_ADMIN_TOKEN)"
        )
    if not opts.token or opts.metrics_public:
        why = "--metrics-public" if opts.token else "no --token"
        out.append(f"/metrics on {where} is open to anyone who can reach the port ({why})")
    return out


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


async def _start_node(opts: _ServeOptions) -> Node:
    from ..errors import MessagingError

    try:
        node = Node(**opts.node_options())
        await node.start()
    except MessagingError as exc:
        raise CLIError(str(exc)) from None
    return node


def _print_banner(node: Node, opts: _ServeOptions) -> None:
    url = node.url
    print(f"{PROG} node listening on {url}", flush=True)
    print(f"  node id    {node.protocol.node_id}", flush=True)
    print(f"  engine     {node.config.resolved_broker_url()}", flush=True)
    print(f"  storage    {node.storage.url}", flush=True)
    print(f"  dashboard  {url}/dashboard/", flush=True)
    print(f"  metrics    {url}/metrics", flush=True)
    for warning in open_surfaces(opts):
        log.warning("%s", warning)
    print("Ctrl-C to stop", file=sys.stderr, flush=True)


async def _serve(opts: _ServeOptions) -> int:
    node = await _start_node(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        _print_banner(node, opts)
        await stop.wait()
        print("stopping ...", file=sys.stderr, flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await node.stop()
    print("stopped", file=sys.stderr, flush=True)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """``serve``: run a node until Ctrl-C or SIGTERM (both exit 0)."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    shutdown: Callable[[], None] | None = None
    if args.trace_console:
        shutdown = _setup_console_tracing()
    opts = _ServeOptions.from_args(args)
    try:
        return asyncio.run(_serve(opts))
    finally:
        if shutdown is not None:
            shutdown()
