"""Sending to other nodes: the :class:`ConnectionPool` and its :class:`Connection` handles.

All requests go through one pool: one aiohttp ``ClientSession`` whose connector keeps up to
``max_connections`` keep-alive connections, one
:class:`~AgentOperatingSystem.reliability.circuit_breaker.CircuitBreaker` per remote node,
and retries with exponential backoff for transient failures (connection errors, timeouts,
429 and 5xx). An agent that is not registered raises :class:`UnknownAgentError`; a node that
does not answer after the retries, or whose circuit is open, raises
:class:`AgentUnreachableError` (at once, without a request, while the circuit is open).
Sends to a busy node are batched (:mod:`.lanes`). A failed delivery is handed to the pool's
``on_failure`` hook (the node's outbox) before it is raised.
"""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping
from urllib.parse import quote

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace
from yarl import URL

from ...config.network import NetworkConfig
from ...reliability.circuit_breaker import CircuitBreaker
from ..clock import SYSTEM_CLOCK, Clock
from ..codec.envelope import encode
from ..errors import (
    AgentUnreachableError,
    CircuitOpenError,
    InvalidMessageError,
    NetworkError,
    RemoteError,
    UnknownAgentError,
    error_text,
)
from ..policy import DEFAULT_OPTIONS, DeliveryOptions
from ..types import Message, MessagePriority, MessageType
from .auth import signature_headers
from .lanes import Lanes
from .registry import AgentRegistry
from .sending import FailureHook, SendReceipt, as_message, failure_reason
from .wire import (
    ACCEPTED_BODY,
    API_PREFIX,
    CLOUDEVENTS_JSON,
    HEADER_NODE,
    answer_duplicate,
    endpoint,
    log,
    normalize_address,
    remote_error,
)

__all__ = ["Connection", "ConnectionPool"]


class _Transient(Exception):
    """A failure worth retrying (and counted by the node's circuit breaker)."""

    def __init__(self, text: str, status: int | None = None) -> None:
        super().__init__(text)
        self.status = status


def _origin(url: URL) -> str:
    return str(url.origin())


class Connection:
    """A handle for sending to one node (and, when ``agent_id`` is set, to one agent).

    The TCP connections underneath belong to the :class:`ConnectionPool` and are kept alive
    and reused; :meth:`close` only retires this handle.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        address: str | None,
        agent_id: str | None = None,
        *,
        sender: Callable[[Message], Awaitable[SendReceipt]] | None = None,
    ) -> None:
        self.pool = pool
        self.address = address
        self.agent_id = agent_id
        self._sender = sender
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Connection {self.agent_id or '*'}@{self.address or 'local'} {state}>"

    async def send(
        self,
        message: Message | Mapping[str, Any],
        *,
        sender_id: str | None = None,
        message_type: MessageType | str | None = None,
        priority: MessagePriority | int | str | None = None,
    ) -> SendReceipt:
        """Send a :class:`Message` (or a dict of content) to the connection's agent (or, for
        a node connection, to the message's ``recipient_id``)."""
        if self.closed:
            raise NetworkError("the connection is closed")
        msg = as_message(
            message,
            sender_id=sender_id,
            recipient_id=self.agent_id,
            default_sender=self.pool.node_id,
            message_type=message_type,
            priority=priority,
        )
        if msg.recipient_id is None:
            raise InvalidMessageError("the message names no recipient_id")
        if self._sender is not None:
            return await self._sender(msg)
        return await self.pool.deliver(msg, address=self.address)

    async def send_message(
        self,
        message: Message | Mapping[str, Any],
        *,
        sender_id: str | None = None,
        message_type: MessageType | str | None = None,
        priority: MessagePriority | int | str | None = None,
    ) -> SendReceipt:
        """Alias of :meth:`send` (spec section 7.2)."""
        return await self.send(
            message, sender_id=sender_id, message_type=message_type, priority=priority
        )

    async def close(self) -> None:
        """Retire the handle; further sends raise :class:`NetworkError`."""
        self.closed = True

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _CountingConnector(aiohttp.TCPConnector):
    """A TCP connector that counts the connections it opens (keep-alive reuse shows as a
    count that stays low); cheaper than a per-request trace hook."""

    opened = 0

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        proto = await super()._create_connection(req, traces, timeout)
        self.opened += 1
        return proto


class ConnectionPool:
    """Keep-alive HTTP connections to other nodes, with retries and a circuit per node.

    ``ConnectionPool(max_connections=10, idle_timeout=300)`` (spec section 7.2); the other
    settings come from ``config``. ``registry`` resolves recipients to node addresses when a
    connection is not bound to one. Use ``async with pool.get_connection() as conn:
    await conn.send_message(message)``; close the pool with :meth:`close` (or ``async with``).
    """

    def __init__(
        self,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        *,
        config: NetworkConfig | None = None,
        registry: AgentRegistry | None = None,
        clock: Clock | None = None,
        node_id: str | None = None,
        on_failure: FailureHook | None = None,
    ) -> None:
        cfg = config or NetworkConfig()
        if max_connections is not None or idle_timeout is not None:
            cfg = cfg.replace(
                max_connections=cfg.max_connections if max_connections is None else max_connections,
                idle_timeout=cfg.idle_timeout if idle_timeout is None else idle_timeout,
            )
        self.config = cfg
        self.registry = registry
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.node_id = node_id or cfg.node_id or f"node-{uuid.uuid4().hex[:12]}"
        self.on_failure = on_failure
        self._secret = cfg.secret
        self._session: aiohttp.ClientSession | None = None
        self._connector: _CountingConnector | None = None
        self._breakers: dict[str, CircuitBreaker] = {}
        self._message_urls: dict[str, URL] = {}
        self._lanes = Lanes(cfg, self.exchange)
        self._closed = False
        self._rng = random.Random()
        self._opened_before = 0
        #: Requests sent so far, retries included.
        self.requests_sent = 0

    @property
    def max_connections(self) -> int:
        """Most TCP connections open at once."""
        return self.config.pool.max_connections

    @property
    def idle_timeout(self) -> float:
        """Seconds an idle connection is kept for reuse."""
        return self.config.pool.idle_timeout

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def connections_opened(self) -> int:
        """TCP connections opened so far (a measure of keep-alive reuse)."""
        conn = self._connector
        return self._opened_before + (conn.opened if conn is not None else 0)

    # -- lifecycle -----------------------------------------------------------------------

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise NetworkError("the connection pool is closed")
        session = self._session
        if session is None:
            cfg = self.config.pool
            connector = _CountingConnector(
                limit=cfg.max_connections,
                limit_per_host=cfg.max_connections_per_host,
                keepalive_timeout=cfg.idle_timeout,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=cfg.request_timeout, sock_connect=cfg.connect_timeout
                ),
            )
            self._connector = connector
            self._session = session
        return session

    async def start(self) -> ConnectionPool:
        """Create the HTTP session now (otherwise it is created on first use)."""
        self._ensure_session()
        return self

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if self._connector is not None:
            self._opened_before += self._connector.opened
            self._connector = None
        if session is not None:
            await session.close()

    async def aclose(self) -> None:
        """Alias of :meth:`close`."""
        await self.close()

    async def __aenter__(self) -> ConnectionPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- circuits ------------------------------------------------------------------------

    def circuit(self, address: str) -> CircuitBreaker:
        """The circuit breaker of the node at ``address`` (created on first use)."""
        breaker = self._breakers.get(address)
        if breaker is not None:
            return breaker
        origin = _origin(URL(normalize_address(address)))
        breaker = self._breakers.get(origin)
        if breaker is None:
            cfg = self.config.circuit
            breaker = CircuitBreaker(
                f"aos-node:{origin}",
                failure_threshold=cfg.failure_threshold,
                window_seconds=cfg.window_seconds,
                recovery_timeout=cfg.recovery_timeout,
                expected_exceptions=(_Transient,),
                clock=self.clock,
            )
            self._breakers[origin] = breaker
        return breaker

    def reset_circuit(self, address: str) -> None:
        """Close the node's circuit now (e.g. after an operator brought it back)."""
        self.circuit(address).reset()

    # -- connections ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def get_connection(
        self, address: str | None = None, agent_id: str | None = None
    ) -> AsyncIterator[Connection]:
        """``async with pool.get_connection() as conn:`` a :class:`Connection` that sends to
        ``address`` (or, when None, to wherever the registry places each recipient)."""
        self._ensure_session()
        addr = normalize_address(address) if address is not None else None
        conn = Connection(self, addr, agent_id)
        try:
            yield conn
        finally:
            await conn.close()

    async def connect(
        self, address: str, agent_id: str | None = None, *, verify: bool = True
    ) -> Connection:
        """A :class:`Connection` to the node at ``address``; with ``verify`` (and an
        ``agent_id``) the node is asked first whether it hosts that agent."""
        addr = normalize_address(address)
        if verify and agent_id is not None:
            await self.check_agent(addr, agent_id)
        return Connection(self, addr, agent_id)

    async def check_agent(self, address: str, agent_id: str) -> dict[str, Any]:
        """Ask the node at ``address`` about ``agent_id``: its entry, or
        :class:`UnknownAgentError` when the node does not host it."""
        url = endpoint(address, f"{API_PREFIX}/agents/{quote(agent_id, safe='')}")
        status, payload, _ = await self.exchange("GET", url, b"", what=f"agent {agent_id!r}")
        if status == 404:
            raise UnknownAgentError(f"node {address} does not host agent {agent_id!r}")
        data = self._json_ok(status, payload, address)
        if not isinstance(data, dict):
            raise RemoteError(f"node {address} answered with an unexpected body", status)
        return data

    # -- requests ------------------------------------------------------------------------

    def _delay(self, attempt: int) -> float:
        retry = self.config.retry
        base = retry.delay(attempt)
        if retry.jitter and base > 0:
            base *= 1.0 + self._rng.uniform(-retry.jitter, retry.jitter)
        return max(0.0, base)

    async def _once(
        self,
        method: str,
        url: URL,
        body: bytes,
        signed: bool,
        content_type: str = CLOUDEVENTS_JSON,
    ) -> tuple[int, bytes]:
        session = self._ensure_session()
        headers = {HEADER_NODE: self.node_id}
        if body:
            headers["Content-Type"] = content_type
        if signed and self._secret is not None:
            headers.update(
                signature_headers(self._secret, method, url.raw_path_qs, body, self.clock.now())
            )
        self.requests_sent += 1
        try:
            async with session.request(
                method, url, data=body if body else None, headers=headers
            ) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _Transient(error_text(exc)) from exc
        if status >= 500 or status == 429:
            code, text = remote_error(payload)
            raise _Transient(f"HTTP {status} {code}: {text}", status)
        return status, payload

    async def exchange(
        self,
        method: str,
        url: URL,
        body: bytes = b"",
        *,
        signed: bool = True,
        what: str = "request",
        content_type: str = CLOUDEVENTS_JSON,
    ) -> tuple[int, bytes, int]:
        """One request with retries and the node's circuit breaker: ``(status, body,
        attempts)`` for any answer below 500 (except 429). Raises
        :class:`AgentUnreachableError` when the retries are exhausted or the circuit is
        open (its ``__cause__`` is then the :class:`CircuitOpenError`)."""
        origin = _origin(url)
        breaker = self.circuit(origin)
        attempts = self.config.retry.max_attempts
        last: _Transient | None = None
        for attempt in range(1, attempts + 1):
            try:
                status, payload = await breaker.call(
                    self._once, method, url, body, signed, content_type
                )
            except CircuitOpenError as exc:
                wait = f"; retry in {exc.retry_after:.1f}s" if exc.retry_after is not None else ""
                raise AgentUnreachableError(
                    f"{what}: node {origin} is unavailable (its circuit is open after repeated"
                    f" failures{', last: ' + str(last) if last else ''}); not tried{wait}"
                ) from exc
            except _Transient as exc:
                last = exc
                if attempt < attempts:
                    await self.clock.sleep(self._delay(attempt))
                continue
            return status, payload, attempt
        raise AgentUnreachableError(
            f"{what}: node {origin} did not answer after {attempts} attempt(s): {last}"
        ) from last

    def _json_ok(self, status: int, payload: bytes, address: str) -> Any:
        if status >= 400:
            code, text = remote_error(payload)
            raise RemoteError(f"node {address} answered HTTP {status} {code}: {text}", status)
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RemoteError(f"node {address} answered with invalid JSON", status) from exc

    async def get_json(self, address: str, path: str, *, signed: bool = True) -> Any:
        """GET ``address + path`` and return its JSON (:class:`RemoteError` for >= 400)."""
        addr = normalize_address(address)
        status, payload, _ = await self.exchange(
            "GET", endpoint(addr, path), b"", signed=signed, what=f"GET {path}"
        )
        return self._json_ok(status, payload, addr)

    async def resolve(self, agent_id: str) -> str:
        """The address of the node hosting ``agent_id`` (:class:`UnknownAgentError`)."""
        if self.registry is None:
            raise UnknownAgentError(
                f"no address for agent {agent_id!r}: pass address= or give the pool a registry"
            )
        info = await self.registry.get(agent_id)
        if info is None:
            raise UnknownAgentError(f"agent {agent_id!r} is not registered")
        if info.address is None:
            raise UnknownAgentError(f"agent {agent_id!r} is registered without an address")
        return info.address

    async def deliver(
        self,
        message: Message,
        *,
        address: str | None = None,
        options: DeliveryOptions = DEFAULT_OPTIONS,
        report_failure: bool = True,
    ) -> SendReceipt:
        """POST one message to the node hosting its recipient (``address``, or resolved
        through the registry), with retries. A failed delivery is handed to ``on_failure``
        (unless ``report_failure`` is False) and then raised."""
        recipient = message.recipient_id
        if recipient is None:
            raise InvalidMessageError("the message names no recipient_id")
        if address is not None:
            target = normalize_address(address)
        else:
            target = await self.resolve(recipient)
        body = encode(message, options, max_bytes=self.config.server.max_body_bytes)
        url = self._message_urls.get(target)
        if url is None:
            url = self._message_urls[target] = endpoint(target, f"{API_PREFIX}/messages")
        try:
            status, payload, attempts = await self._lanes.send(target, url, message, body)
            if status >= 400:
                raise _refusal(status, payload, target, message)
        except NetworkError as exc:
            if report_failure and self.on_failure is not None:
                try:
                    await self.on_failure(message, options, failure_reason(exc), exc)
                except Exception:
                    log.exception("could not dead-letter failed message %s", message.message_id)
            raise
        duplicate = payload != ACCEPTED_BODY and answer_duplicate(payload)
        return SendReceipt(message.message_id, recipient, target, attempts, duplicate)


def _refusal(status: int, payload: bytes, target: str, message: Message) -> NetworkError:
    """The error of a node's refusal (``status`` >= 400) of ``message``."""
    code, text = remote_error(payload)
    if status == 404:
        return UnknownAgentError(
            f"node {target} does not host agent {message.recipient_id!r} ({code}: {text})"
        )
    return RemoteError(
        f"node {target} refused message {message.message_id} for {message.recipient_id!r}:"
        f" HTTP {status} {code}: {text}",
        status,
    )
