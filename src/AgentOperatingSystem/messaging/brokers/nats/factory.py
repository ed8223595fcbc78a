"""Opening the engine: :func:`create_nats_broker` connects, makes the namespace's assets and
returns a ready :class:`~.broker.NatsBroker`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable

import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from ....config.urls import parse_nats_url
from ...clock import Clock
from ...errors import BrokerError, BrokerUnavailableError, ConfigurationError, MessagingError
from . import setup
from .broker import NatsBroker
from .connection import RETRY_SECONDS, Connection
from .subjects import DEFAULT_NAMESPACE, NAMESPACE_RE, Subjects

__all__ = ["create_nats_broker"]

_log = logging.getLogger(__name__)


async def create_nats_broker(
    url: str,
    *,
    clock: Clock,
    dedup_window: float = 600.0,
    namespace: str | None = None,
    replicas: int | None = None,
    connect_timeout: float = 10.0,
    retry_seconds: float = RETRY_SECONDS,
) -> NatsBroker:
    """Connect to NATS (one server or a cluster) and return a ready :class:`NatsBroker`.

    ``url`` is ``nats://host:port`` or a comma list of servers, with optional query
    ``?namespace=x&replicas=3``; the keyword arguments win over the query. Streams and
    buckets are created when missing. Raises :class:`BrokerUnavailableError` when no server
    answers within ``connect_timeout`` seconds, :class:`ConfigurationError` for a bad URL.
    Once connected, the client reconnects by itself for as long as the broker is open. A
    publish is retried for ``retry_seconds`` while the server is unavailable, then raises
    :class:`~...errors.PublishOutcomeUnknownError` when it was sent and not acknowledged,
    or :class:`BrokerUnavailableError` when it certainly was not stored.
    """
    servers, options = parse_nats_url(url)
    ns = namespace if namespace is not None else options.get("namespace", DEFAULT_NAMESPACE)
    reps = _check_options(ns, replicas if replicas is not None else options.get("replicas", 1))
    if dedup_window < 0:
        raise ConfigurationError("dedup_window must be >= 0")
    if retry_seconds <= 0:
        raise ConfigurationError("retry_seconds must be > 0")
    opened: list[Connection] = []

    async def on_reconnect() -> None:
        _log.info("reconnected to NATS")
        for conn in opened:
            await conn.reconnected()

    nc = await _connect(servers, connect_timeout, on_reconnect)
    conn = Connection(nc, Subjects(ns), retry_seconds=retry_seconds)
    opened.append(conn)
    try:
        buckets = await setup.ensure(conn, replicas=reps, dedup_window=dedup_window)
        broker = NatsBroker(conn, buckets, clock=clock, replicas=reps, dedup_window=dedup_window)
        await broker.open()
    except BaseException as exc:
        conn.closing = conn.closed = True
        with contextlib.suppress(Exception):
            await nc.close()
        if isinstance(exc, MessagingError):
            raise
        if isinstance(exc, nats.errors.Error):
            raise BrokerError(f"NATS setup failed: {exc}") from exc
        raise
    return broker


async def _connect(
    servers: list[str], timeout: float, on_reconnect: Callable[[], Awaitable[None]]
) -> NatsClient:
    """A client connected to one of ``servers`` that reconnects by itself, forever."""

    async def on_error(exc: Exception) -> None:
        _log.debug("nats connection error: %r", exc)

    async def on_disconnect() -> None:
        _log.info("disconnected from NATS; reconnecting")

    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=servers,
                name="aos-messaging",
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                no_echo=True,
                reconnect_time_wait=0.25,
                connect_timeout=2,
                ping_interval=10,
                max_outstanding_pings=3,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            ),
            timeout=timeout,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise BrokerUnavailableError(f"cannot connect to NATS at {', '.join(servers)}") from exc


def _check_options(namespace: str, replicas: Any) -> int:
    """Validate the namespace and the replica count (1..5); return the count."""
    if not NAMESPACE_RE.match(namespace):
        raise ConfigurationError(
            f"NATS namespace {namespace!r} must be 1-64 characters of letters, digits, '_' or '-'"
        )
    try:
        reps = int(replicas)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"NATS replicas must be an integer, not {replicas!r}") from exc
    if not 1 <= reps <= 5:
        raise ConfigurationError("NATS replicas must be between 1 and 5")
    return reps
