"""Sending to other nodes: the :class:`ConnectionPool` and its :class:`Connection` handles.

All requests go through one pool and its :class:`~.transport.Transport`: keep-alive
connections (up to ``max_connections``), a circuit breaker per remote node, and retries with
exponential backoff for transient failures (connection errors, timeouts, 429 and 5xx). An
agent that is not registered raises :class:`UnknownAgentError`; a node that does not answer
after the retries, or whose circuit is open, raises :class:`AgentUnreachableError` (at once,
without a request, while the circuit is open). Sends to a busy node are batched
(:mod:`.lanes`). A failed delivery is handed to the pool's ``on_failure`` hook (the node's
outbox) before it is raised.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Self
from urllib.parse import quote

from yarl import URL

from ...config.network import NetworkConfig
from ...reliability.circuit_breaker import CircuitBreaker
from ..clock import SYSTEM_CLOCK, Clock
from ..codec.envelope import encode
from ..errors import (
    InvalidMessageError,
    NetworkError,
    RemoteError,
    UnknownAgentError,
)
from ..policy import DEFAULT_OPTIONS, DeliveryOptions
from ..types import Message, MessagePriority, MessageType
from .lanes import Lanes
from .registry import AgentRegistry
from .resource import AsyncResource
from .sending import FailureHook, SendReceipt, as_message, failure_reason
from .transport import Transport
from .wire import (
    ACCEPTED_BODY,
    API_PREFIX,
    answer_duplicate,
    endpoint,
    log,
    normalize_address,
    remote_error,
)

__all__ = ["Connection", "ConnectionPool"]


@dataclass(eq=False, repr=False)
class Connection(AsyncResource):
    """A handle for sending to one node (and, when ``agent_id`` is set, to one agent).

    The TCP connections underneath belong to the :class:`ConnectionPool` and are kept alive
    and reused; :meth:`close` only retires this handle. ``sender``, when given, sends what
    :meth:`send` builds instead of the pool (the node routes it, local or remote).
    """

    pool: ConnectionPool
    address: str | None
    agent_id: str | None = None
    _: KW_ONLY
    sender: Callable[[Message], Awaitable[SendReceipt]] | None = None
    closed: bool = field(default=False, init=False)

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
        sender = self.sender
        if sender is not None:
            return await sender(msg)
        return await self.pool.deliver(msg, address=self.address)

    #: Alias of :meth:`send` (spec section 7.2).
    send_message = send

    async def close(self) -> None:
        """Retire the handle; further sends raise :class:`NetworkError`."""
        self.closed = True

    aclose = close


class ConnectionPool(AsyncResource):
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
        self._transport = transport = Transport(cfg, self.clock, self.node_id)
        #: One request with retries and the node's circuit breaker
        #: (:meth:`.transport.Transport.exchange`).
        self.exchange = transport.exchange
        self._message_urls: dict[str, URL] = {}
        self._lanes = Lanes(cfg, transport)

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
        return self._transport.closed

    @property
    def connections_opened(self) -> int:
        """TCP connections opened so far (a measure of keep-alive reuse)."""
        return self._transport.connections_opened

    @property
    def requests_sent(self) -> int:
        """Requests sent so far, retries included."""
        return self._transport.requests_sent

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> Self:
        """Create the HTTP session now (otherwise it is created on first use)."""
        self._transport.session()
        return self

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        await self._transport.close()

    aclose = close

    # -- circuits ------------------------------------------------------------------------

    def circuit(self, address: str) -> CircuitBreaker:
        """The circuit breaker of the node at ``address`` (created on first use)."""
        return self._transport.circuit(address)

    def reset_circuit(self, address: str) -> None:
        """Close the node's circuit now (e.g. after an operator brought it back)."""
        self._transport.circuit(address).reset()

    # -- connections ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def get_connection(
        self, address: str | None = None, agent_id: str | None = None
    ) -> AsyncIterator[Connection]:
        """``async with pool.get_connection() as conn:`` a :class:`Connection` that sends to
        ``address`` (or, when None, to wherever the registry places each recipient)."""
        self._transport.session()
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
