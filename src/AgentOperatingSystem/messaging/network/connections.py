"""What a client may hold of the node's HTTP server: :class:`ConnectionGuard`.

The guard sits between the listening socket and aiohttp: each accepted connection goes
through its protocol wrapper (counted, per client address and in all) and each request
through its middleware (which tells when the headers are in and the handler runs). It
enforces :class:`~AgentOperatingSystem.config.network.LimitsConfig`:

* a connection is in one of four states: *idle* (kept alive, no byte of a next request),
  *headers* (a request line and headers on the way; a new connection starts here), *body*
  (headers in, the body on the way) and *busy* (a handler runs with the whole request);
* *headers* must end within ``header_timeout``, *body* within ``body_timeout`` and *idle*
  within ``keepalive_timeout``; past its deadline a connection is answered ``408`` (idle
  ones are just closed) by a sweep that runs a few times a second;
* a new connection over ``max_connections_per_client`` (its address) or over the total
  closes the connection that has waited longest without a complete request (answered
  ``503`` unless idle); when there is none (all busy), the newcomer is answered ``503`` and
  closed at once. The accept loop therefore never runs out of file descriptors: the total
  is also capped at half the process's ``RLIMIT_NOFILE``.

What the guard does is logged by :class:`~.quiet.QuietLog` lines, at most one every few
seconds, and so is a client that went away in the middle of a request (no traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from ...config.network import LimitsConfig
from ..clock import Clock
from .quiet import QuietLog
from .wire import log

__all__ = ["ConnectionGuard", "open_file_cap"]

_IDLE, _HEADERS, _BODY, _BUSY = "idle", "headers", "body", "busy"
#: seconds between two lines of one kind of guard event
LOG_INTERVAL = 10.0
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answer(status: int, reason: str, text: str) -> bytes:
    body = f'{{"error":{{"code":"{reason.lower().replace(" ", "_")}","message":"{text}"}}}}'
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    return (head + "\r\n" + body).encode()


_BUSY_ANSWER = _answer(503, "Service Unavailable", "too many connections; try again")
_TIMEOUT_ANSWER = _answer(408, "Request Timeout", "the request did not arrive in time")


def open_file_cap() -> int | None:
    """Half the process's soft ``RLIMIT_NOFILE`` (None when unlimited or unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    return max(1, soft // 2)


class _Conn:
    """One accepted connection as the guard sees it."""

    __slots__ = ("closed", "deadline", "key", "ours", "peer", "request", "state", "transport")

    def __init__(
        self, key: object, peer: str, transport: asyncio.Transport, deadline: float
    ) -> None:
        self.key = key
        self.peer = peer
        self.transport = transport
        self.state = _HEADERS
        self.deadline = deadline
        self.request: web.Request | None = None
        self.closed = False
        #: closed by the guard (a limit or a deadline), not by the client
        self.ours = False

    def waiting(self) -> bool:
        """True while the connection holds no complete request (a body that has all
        arrived makes it busy)."""
        if self.state == _BODY and self.request is not None and self.request.content.is_eof():
            self.state = _BUSY
        return self.state != _BUSY


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the guard."""

    __slots__ = ("_conn", "_guard", "_inner")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._conn = self._guard.admit(self._inner, transport)
        if self._conn is not None:
            self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        if conn.state == _IDLE:
            self._guard.started(conn)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._conn is None:
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self._conn
        if conn is None:
            return
        self._guard.release(conn)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._conn is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._conn is not None:
            self._inner.resume_writing()


class ConnectionGuard:
    """Counts and times the connections of one HTTP server (``limits``, times on
    ``clock``'s monotonic time). :meth:`factory` wraps aiohttp's protocol factory,
    :attr:`middleware` goes first in the application, and :meth:`start` runs the sweep."""

    def __init__(self, limits: LimitsConfig, clock: Clock, *, cap: int | None = None) -> None:
        self.limits = limits
        self.clock = clock
        cap = open_file_cap() if cap is None else cap
        #: the most connections open at once (the configured total, capped by the files)
        self.max_connections = (
            limits.max_inbound_connections
            if cap is None
            else min(limits.max_inbound_connections, cap)
        )
        self._conns: dict[object, _Conn] = {}
        self._by_peer: dict[str, dict[_Conn, None]] = {}
        self._waiting: dict[_Conn, None] = {}
        self._task: asyncio.Task[None] | None = None
        #: connections answered 503 at once, closed to make room, closed on a deadline
        self.refused = self.evicted = self.timed_out = 0
        self._limit_log = QuietLog(
            log, logging.WARNING, LOG_INTERVAL, clock, "connections refused or closed at a limit"
        )
        self._timeout_log = QuietLog(
            log, logging.INFO, LOG_INTERVAL, clock, "connections closed on a timeout"
        )
        self.gone_log = QuietLog(
            log, logging.INFO, LOG_INTERVAL, clock, "clients gone in the middle of a request"
        )

    @property
    def open_connections(self) -> int:
        """Connections the guard counts now (not those it is closing)."""
        return len(self._conns)

    # -- connections ---------------------------------------------------------------------

    def factory(self, make: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: ``make()``'s protocols, guarded."""

        def guarded() -> asyncio.Protocol:
            return _Guarded(self, make())

        return guarded

    def admit(self, key: object, transport: asyncio.Transport) -> _Conn | None:
        """Count a new connection (after making room), or answer it 503 and close it."""
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else ""
        mine = self._by_peer.get(peer)
        per_client = self.limits.max_connections_per_client
        if per_client and mine is not None and len(mine) >= per_client:
            if not self._evict(mine, f"client {peer} has {len(mine)} connections"):
                self._refuse(transport, peer, f"client {peer} is at its limit")
                return None
        if len(self._conns) >= self.max_connections:
            if not self._evict(self._waiting, f"{len(self._conns)} connections are open"):
                self._refuse(transport, peer, "the node is at its connection limit")
                return None
        conn = _Conn(key, peer, transport, self.clock.monotonic() + self.limits.header_timeout)
        self._conns[key] = conn
        self._by_peer.setdefault(peer, {})[conn] = None
        self._waiting[conn] = None
        return conn

    def _refuse(self, transport: asyncio.Transport, peer: str, why: str) -> None:
        self.refused += 1
        self._limit_log.note(f"refused a connection from {peer or '?'}: {why} (503)")
        _close(transport, _BUSY_ANSWER)

    def _evict(self, among: dict[_Conn, None], why: str) -> bool:
        """Close the connection of ``among`` that waited longest; False when none waits."""
        for conn in list(among):
            if conn.waiting():
                self.evicted += 1
                self._limit_log.note(
                    f"closed a waiting connection of {conn.peer or '?'} to make room: {why}"
                )
                self._close(conn, None if conn.state == _IDLE else _BUSY_ANSWER)
                return True
            self._waiting.pop(conn, None)
        return False

    def _close(self, conn: _Conn, answer: bytes | None) -> None:
        self._forget(conn)
        conn.closed = conn.ours = True
        _close(conn.transport, answer)

    def _forget(self, conn: _Conn) -> None:
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        self._waiting.pop(conn, None)
        peers = self._by_peer.get(conn.peer)
        if peers is not None:
            peers.pop(conn, None)
            if not peers:
                del self._by_peer[conn.peer]

    def release(self, conn: _Conn) -> None:
        """The connection is closed."""
        if not conn.closed:
            conn.closed = True
            self._forget(conn)

    def started(self, conn: _Conn) -> None:
        """The first byte of a request arrived on an idle connection."""
        self._wait(conn, _HEADERS, self.limits.header_timeout)

    def _wait(self, conn: _Conn, state: str, seconds: float) -> None:
        conn.state = state
        conn.deadline = self.clock.monotonic() + seconds
        self._waiting.pop(conn, None)
        self._waiting[conn] = None

    # -- requests ------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Marks the connection as reading the body, then busy, then idle. A request whose
        client is gone before it starts is not handled; one that fails because its client
        went away is logged as one quiet line."""
        conn = self._conns.get(request.protocol)
        if _gone(request):
            if conn is None or not conn.ours:
                self.client_gone(request)
            return web.Response(status=499)
        if conn is None or conn.closed:
            return await self._handle(request, handler, None)
        conn.request = request
        if request.content.is_eof():
            conn.state = _BUSY
            self._waiting.pop(conn, None)
        else:
            self._wait(conn, _BODY, self.limits.body_timeout)
        try:
            return await self._handle(request, handler, conn)
        finally:
            conn.request = None
            if not conn.closed:
                self._wait(conn, _IDLE, self.limits.keepalive_timeout)

    async def _handle(
        self, request: web.Request, handler: _Handler, conn: _Conn | None
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ConnectionError:
            if not _gone(request) and (conn is None or not conn.closed):
                raise
            if conn is None or not conn.ours:
                self.client_gone(request)
            return web.Response(status=499)

    def client_gone(self, request: web.Request) -> None:
        """Note (quietly) that the client of ``request`` went away before its answer."""
        peer = request.remote or "?"
        self.gone_log.note(f"client {peer} went away during {request.method} {request.path}")

    # -- deadlines -----------------------------------------------------------------------

    def sweep(self) -> int:
        """Close every waiting connection past its deadline; how many were closed."""
        now = self.clock.monotonic()
        closed = 0
        for conn in list(self._waiting):
            if not conn.waiting():
                self._waiting.pop(conn, None)
            elif conn.deadline <= now:
                closed += 1
                self.timed_out += 1
                self._timeout_log.note(
                    f"closed a connection of {conn.peer or '?'}: no complete {conn.state} in time"
                )
                self._close(conn, None if conn.state == _IDLE else _TIMEOUT_ANSWER)
        for quiet in (self._limit_log, self._timeout_log, self.gone_log):
            quiet.flush()
        return closed

    def start(self, name: str) -> None:
        """Start the sweep (a task named ``name``)."""
        if self._task is None:
            self._task = asyncio.create_task(self._sweeping(), name=name)

    async def stop(self) -> None:
        """Stop the sweep (cancelled and awaited)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _sweeping(self) -> None:
        lim = self.limits
        tick = min(1.0, max(0.05, min(lim.header_timeout, lim.body_timeout) / 4))
        while True:
            await self.clock.sleep(tick)
            try:
                self.sweep()
            except Exception:  # pragma: no cover - a bug must not end the sweep
                log.exception("the connection sweep failed")


def _gone(request: web.Request) -> bool:
    """True when the connection of ``request`` is closed or closing."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _close(transport: asyncio.Transport, answer: bytes | None) -> None:
    """Answer (best effort) and close; a peer that does not read gets no more of our
    buffers or descriptor: the socket is aborted."""
    with contextlib.suppress(Exception):
        if answer is not None and not transport.is_closing():
            transport.write(answer)
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()
