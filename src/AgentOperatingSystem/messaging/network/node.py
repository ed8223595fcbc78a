"""Agents on other hosts: the node server, the connection pool and the A2A 1.0 endpoints.

A *node* is a :class:`NetworkProtocol`. ``start()`` serves HTTP (aiohttp) on the configured
host and port; a message that arrives for an agent hosted on the node is published on the
node's :class:`~AgentOperatingSystem.messaging.core.bus.MessageBus`. Agents are known through an
:class:`AgentRegistry` kept in a :class:`~AgentOperatingSystem.storage.manager.StorageManager`,
so processes that share the store (a SQLite file) share the registry; ``add_peer(url)``
imports another node's agents from their A2A agent cards instead.

Node-to-node wire protocol
--------------------------
``POST /aos/v1/messages`` carries one message as a CloudEvents 1.0 event in structured JSON
mode (``Content-Type: application/cloudevents+json``, the envelope codec of the bus), signed
with the deployment's shared secret (``NetworkConfig.auth_secret``)::

    X-AOS-Timestamp: <unix seconds>
    X-AOS-Signature: v1=<hex HMAC-SHA256(secret,
                         "aos-v1\\n" METHOD "\\n" PATH "\\n" TIMESTAMP "\\n" BODY)>
    X-AOS-Node: <sending node id>

The answer is ``202 {"accepted":true,"duplicate":false}`` (``"duplicate":true`` when it
had the message already). Errors carry
``{"error": {"code": ..., "message": ...}}``: ``400 bad_request``, ``401 unauthorized``
(unsigned, wrongly signed, or a timestamp older than ``signature_max_age``), ``404
unknown_agent``, ``413 payload_too_large``, ``503 queue_full``/``unavailable``. The receiving
node publishes a message with its id as idempotency key, so a retried or replayed request is
delivered once within the bus's dedup window.

The same endpoint takes a CloudEvents JSON batch (``Content-Type:
application/cloudevents-batch+json``, a JSON array of up to ``MAX_BATCH_MESSAGES`` envelopes,
signed as one body): each message is admitted on its own and the answer is ``200
{"results": [{"id", "status": 202, "duplicate"} | {"id", "status": 4xx/5xx, "error"}]}`` in
order; a body that is not such an array is refused as a whole (``400``), as is an unsigned or
oversize one. Also served: ``GET /aos/v1/health`` (public),
``GET /aos/v1/agents`` and ``GET /aos/v1/agents/{agent_id}`` (signed).

Sending
-------
All requests go through one :class:`ConnectionPool`: one aiohttp ``ClientSession`` whose
connector keeps up to ``max_connections`` keep-alive connections, one
:class:`~AgentOperatingSystem.reliability.circuit_breaker.CircuitBreaker` per remote node,
and retries with exponential backoff for transient failures (connection errors, timeouts,
429 and 5xx). An agent that is not registered raises :class:`UnknownAgentError`; a node that
does not answer after the retries, or whose circuit is open, raises
:class:`AgentUnreachableError` (at once, without a request, while the circuit is open).

While ``batch_after`` requests to one node are in flight, further sends to that node wait
and the oldest waiting one takes all that wait (up to ``max_batch`` messages and
``max_body_bytes``) in one batch request; each send still returns its own receipt or raises
its own error (a per-message 5xx is retried alone). A lone send never waits: latency is that
of one request. A send cancelled while its batch is in flight puts the others back to go in
a new request (the node deduplicates by message id).

A send that fails is not lost: the message goes to the dead-letter queue of the sender's
*network outbox* on the local bus, ``_net.outbox.<sender_id>`` (see :func:`outbox_queue`),
with the reason (``unreachable``, ``circuit_open``, ``rejected``) and the error. Read them with
:meth:`NetworkProtocol.get_failed_messages` (or ``bus.get_dead_letter_messages(queue)``);
:meth:`NetworkProtocol.resubmit_failed` sends them again, and so does the node's outbox pump
for anything put back with ``bus.resubmit(message)``.

A2A 1.0
-------
Each hosted agent has an Agent Card at ``/agents/{agent_id}/.well-known/agent-card.json``
(its capabilities as skills, streaming supported) and a JSON-RPC endpoint at
``/agents/{agent_id}`` with ``SendMessage``, ``SendStreamingMessage`` (server-sent events),
``GetTask`` and ``CancelTask`` (the A2A 0.3 names ``message/send``, ``message/stream``,
``tasks/get``, ``tasks/cancel`` are answered in the 0.3 shapes). An A2A message becomes a
QUERY to the agent on the bus (sender ``a2a:<contextId>``, content ``{"text", "parts",
"data", "a2a"}``); the handler's return value becomes the task's artifact and the agent's reply
message (``{"text": ...}`` -> a text part, ``{"parts": [...]}`` -> those parts, anything
else -> a data part). The A2A endpoints are public (no HMAC) unless
``NetworkConfig.a2a_auth_token`` is set; agent cards are always public.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import math
import random
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from urllib.parse import quote, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace
from yarl import URL

from ...config.messagebus import MessageBusConfig
from ...config.network import NetworkConfig
from ...reliability.circuit_breaker import CircuitBreaker
from ...storage.manager import StorageManager
from ..brokers.base import Delivery, Envelope, Settlement
from ..clock import SYSTEM_CLOCK, Clock
from ..codec.envelope import decode, decode_batch, decode_event, encode
from ..core.bus import MessageBus
from ..errors import (
    AgentUnreachableError,
    BrokerClosedError,
    CircuitOpenError,
    ConfigurationError,
    DecodeError,
    DecryptionError,
    DuplicateMessageError,
    InvalidMessageError,
    MessageTooLargeError,
    MessagingError,
    NetworkError,
    PermissionDeniedError,
    QueueFullError,
    RemoteError,
    RequestFailedError,
    RequestTimeoutError,
    StorageError,
    UnknownAgentError,
    error_text,
)
from ..policy import DEFAULT_OPTIONS, DeliveryOptions
from ..types import Message, MessagePriority, MessageType

__all__ = [
    "API_PREFIX",
    "OUTBOX_PREFIX",
    "AgentInfo",
    "AgentRegistry",
    "Connection",
    "ConnectionPool",
    "NetworkConfig",
    "NetworkProtocol",
    "ResubmitReport",
    "SendReceipt",
    "normalize_address",
    "outbox_queue",
    "sign_request",
    "signature_headers",
    "verify_request",
]

log = logging.getLogger("aos.messaging.network")

API_PREFIX = "/aos/v1"
OUTBOX_PREFIX = "_net.outbox."
REGISTRY_NAMESPACE = "aos.network.agents"
HEADER_TIMESTAMP = "X-AOS-Timestamp"
HEADER_SIGNATURE = "X-AOS-Signature"
HEADER_NODE = "X-AOS-Node"
CLOUDEVENTS_JSON = "application/cloudevents+json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
#: most messages a node accepts in one batch request
MAX_BATCH_MESSAGES = 1000
CARD_PATH = "/.well-known/agent-card.json"
_SIG_VERSION = "v1"
_MAX_SEEN = 200_000
_ACCEPTED_BODY = b'{"accepted":true,"duplicate":false}'
_DUPLICATE_BODY = b'{"accepted":true,"duplicate":true}'

try:  # pragma: no cover - depends on how the package is installed
    from importlib.metadata import version as _pkg_version

    _VERSION = _pkg_version("aos-messaging")
except Exception:  # pragma: no cover
    _VERSION = "0.0.0"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def outbox_queue(sender_id: str) -> str:
    """The local queue whose dead letters are ``sender_id``'s failed network sends."""
    return OUTBOX_PREFIX + sender_id


@functools.lru_cache(maxsize=1024)
def normalize_address(address: str) -> str:
    """``scheme://host[:port][/path]`` in canonical form (lower-case host, no default port,
    no trailing slash). Raises :class:`ConfigurationError` for anything but http(s) URLs."""
    if not isinstance(address, str):
        raise ConfigurationError(f"address must be a string URL, not {type(address).__name__}")
    parts = urlsplit(address.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"invalid address {address!r}: expected an http(s) URL such as 'http://host:8080'"
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"invalid port in address {address!r}") from exc
    default = 80 if parts.scheme == "http" else 443
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


# ---------------------------------------------------------------------------------- signing


#: HMAC states with the key already absorbed, one per secret: copying one is about three
#: times cheaper than building a new HMAC (no key schedule, no digest look-up per request).
_KEYED: dict[bytes, Any] = {}


def _mac(secret: bytes, method: str, path: str, timestamp: str, body: bytes) -> str:
    keyed = _KEYED.get(secret)
    if keyed is None:
        if len(_KEYED) >= 64:  # secrets rotate rarely; never let this grow without bound
            _KEYED.clear()
        keyed = _KEYED[secret] = hmac.new(secret, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(f"aos-{_SIG_VERSION}\n{method.upper()}\n{path}\n{timestamp}\n".encode())
    mac.update(body)
    return mac.hexdigest()


def sign_request(secret: bytes, method: str, path: str, timestamp: str, body: bytes) -> str:
    """The ``X-AOS-Signature`` value of a request: ``v1=<hex HMAC-SHA256>`` over the method,
    the raw path with query, the timestamp and the body."""
    return f"{_SIG_VERSION}={_mac(secret, method, path, timestamp, body)}"


def signature_headers(
    secret: bytes, method: str, path: str, body: bytes, now: float
) -> dict[str, str]:
    """The timestamp and signature headers for a request sent at ``now`` (epoch seconds)."""
    timestamp = f"{now:.3f}"
    return {
        HEADER_TIMESTAMP: timestamp,
        HEADER_SIGNATURE: sign_request(secret, method, path, timestamp, body),
    }


class _AuthFailure(Exception):
    """A request failed authentication (-> 401)."""


def _check_timestamp(timestamp: str | None, now: float, max_age: float) -> None:
    if not timestamp:
        raise _AuthFailure(f"missing {HEADER_TIMESTAMP} header: the request is not signed")
    try:
        stamp = float(timestamp)
    except ValueError:
        raise _AuthFailure(f"invalid {HEADER_TIMESTAMP} header") from None
    if not math.isfinite(stamp):
        raise _AuthFailure(f"invalid {HEADER_TIMESTAMP} header")
    if abs(now - stamp) > max_age:
        raise _AuthFailure(
            f"stale request: timestamp is {abs(now - stamp):.0f}s away from this node's clock"
            f" (limit {max_age:.0f}s)"
        )


def verify_request(
    secrets: Sequence[bytes],
    method: str,
    path: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float,
    max_age: float,
) -> bool:
    """True when ``signature`` is a valid signature of the request by one of ``secrets`` and
    the timestamp is within ``max_age`` seconds of ``now`` (constant-time comparison)."""
    try:
        _verify(secrets, method, path, timestamp, signature, body, now=now, max_age=max_age)
    except _AuthFailure:
        return False
    return True


def _verify(
    secrets: Sequence[bytes],
    method: str,
    path: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float,
    max_age: float,
) -> None:
    _check_timestamp(timestamp, now, max_age)
    assert timestamp is not None
    if not signature:
        raise _AuthFailure(f"missing {HEADER_SIGNATURE} header: the request is not signed")
    given = signature.strip()
    ok = False
    for secret in secrets:
        expected = f"{_SIG_VERSION}={_mac(secret, method, path, timestamp, body)}"
        if hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
            ok = True
    if not ok:
        raise _AuthFailure("invalid signature")


# ---------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class AgentInfo:
    """An agent in the registry: where it is hosted (``address``, the node's URL; ``None``
    for an agent of this node not yet started) and what it can do."""

    agent_id: str
    address: str | None
    capabilities: tuple[str, ...] = ()
    node_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    registered_at: float = 0.0

    def has_capabilities(self, capabilities: Iterable[str]) -> bool:
        """True when the agent has every one of ``capabilities``."""
        own = set(self.capabilities)
        return all(c in own for c in capabilities)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "agent_id": self.agent_id,
            "address": self.address,
            "capabilities": list(self.capabilities),
            "node_id": self.node_id,
            "metadata": dict(self.metadata),
            "registered_at": self.registered_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentInfo:
        """Rebuild from :meth:`to_dict` output; :class:`StorageError` when malformed."""
        try:
            agent_id = data["agent_id"]
            address = data.get("address")
            caps = data.get("capabilities") or []
            node_id = data.get("node_id")
            metadata = data.get("metadata") or {}
            registered_at = float(data.get("registered_at") or 0.0)
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"malformed agent registry entry: {exc}") from exc
        if (
            not isinstance(agent_id, str)
            or not (address is None or isinstance(address, str))
            or not isinstance(caps, list)
            or not all(isinstance(c, str) for c in caps)
            or not (node_id is None or isinstance(node_id, str))
            or not isinstance(metadata, dict)
        ):
            raise StorageError(f"malformed agent registry entry for {data.get('agent_id')!r}")
        return cls(agent_id, address, tuple(caps), node_id, metadata, registered_at)


class AgentRegistry:
    """Where agents are: entries in a :class:`StorageManager` namespace, so every process
    sharing the store sees them. Look-ups are cached for ``cache_seconds``."""

    def __init__(
        self,
        storage: StorageManager,
        *,
        cache_seconds: float = 1.0,
        clock: Clock | None = None,
        namespace: str = REGISTRY_NAMESPACE,
    ) -> None:
        self.storage = storage
        self.namespace = namespace
        self.cache_seconds = cache_seconds
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._cache: dict[str, tuple[float, AgentInfo]] = {}

    async def register(self, info: AgentInfo) -> None:
        """Add or replace an agent."""
        await self.storage.put(self.namespace, info.agent_id, info.to_dict())
        self._cache[info.agent_id] = (self.clock.monotonic(), info)

    async def unregister(self, agent_id: str) -> bool:
        """Remove an agent; True when it was registered."""
        self._cache.pop(agent_id, None)
        return await self.storage.delete(self.namespace, agent_id)

    async def get(self, agent_id: str) -> AgentInfo | None:
        """The agent's entry, or None."""
        hit = self._cache.get(agent_id)
        now = self.clock.monotonic()
        if hit is not None and now - hit[0] < self.cache_seconds:
            return hit[1]
        data = await self.storage.get(self.namespace, agent_id)
        if data is None:
            self._cache.pop(agent_id, None)
            return None
        if not isinstance(data, dict):
            raise StorageError(f"malformed agent registry entry for {agent_id!r}")
        info = AgentInfo.from_dict(data)
        self._cache[agent_id] = (now, info)
        return info

    async def list(self) -> list[AgentInfo]:
        """Every registered agent, sorted by id (malformed entries are skipped and logged)."""
        out: list[AgentInfo] = []
        for key, data in await self.storage.list(self.namespace):
            try:
                if not isinstance(data, dict):
                    raise StorageError("not an object")
                out.append(AgentInfo.from_dict(data))
            except StorageError as exc:
                log.warning("skipping registry entry %r: %s", key, exc)
        return out

    async def find(self, capabilities: Iterable[str] | None = None) -> builtins.list[AgentInfo]:
        """Agents having every capability in ``capabilities`` (all agents when None)."""
        wanted = [] if capabilities is None else _capabilities(capabilities)
        return [a for a in await self.list() if a.has_capabilities(wanted)]


def _capabilities(value: Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        raise ConfigurationError("capabilities must be a list of strings, not a string")
    out: list[str] = []
    for c in value:
        if not isinstance(c, str) or not c:
            raise ConfigurationError(f"capabilities must be non-empty strings, got {c!r}")
        if c not in out:
            out.append(c)
    return out


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """What a send did: ``address`` is the node that accepted the message (``None`` when the
    recipient is hosted on this node and the message went straight to the local bus);
    ``duplicate`` when the receiver had it already (a retry or a resubmission)."""

    message_id: str
    recipient_id: str
    address: str | None
    attempts: int = 1
    duplicate: bool = False

    @property
    def local(self) -> bool:
        """True when the message was delivered on this node's bus."""
        return self.address is None


@dataclass(slots=True)
class ResubmitReport:
    """Outcome of :meth:`NetworkProtocol.resubmit_failed`: ids delivered, ids that failed
    again (back in the dead-letter queue)."""

    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


FailureHook = Callable[[Message, DeliveryOptions, str, BaseException], Awaitable[None]]
"""``hook(message, options, reason, error)``: called when a delivery failed for good."""


def _as_message(
    message: Message | Mapping[str, Any],
    *,
    sender_id: str | None,
    recipient_id: str | None,
    default_sender: str,
    message_type: MessageType | str | None = None,
    priority: MessagePriority | int | str | None = None,
    correlation_id: str | None = None,
    ttl: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Message:
    """A :class:`Message` from a Message or a dict of content, with the addressing given."""
    if isinstance(message, Message):
        changes: dict[str, Any] = {}
        if sender_id is not None and sender_id != message.sender_id:
            changes["sender_id"] = sender_id
        if recipient_id is not None and recipient_id != message.recipient_id:
            changes["recipient_id"] = recipient_id
        for name, value in (
            ("message_type", message_type),
            ("priority", priority),
            ("correlation_id", correlation_id),
            ("ttl", ttl),
        ):
            if value is not None:
                changes[name] = value
        if metadata:
            changes["metadata"] = {**message.metadata, **metadata}
        return message.copy(**changes) if changes else message
    if isinstance(message, Mapping):
        return Message(
            message_type=MessageType.coerce(
                message_type if message_type is not None else MessageType.NOTIFICATION
            ),
            sender_id=sender_id or default_sender,
            recipient_id=recipient_id,
            content=dict(message),
            priority=MessagePriority.coerce(
                priority if priority is not None else MessagePriority.NORMAL
            ),
            metadata=dict(metadata or {}),
            correlation_id=correlation_id,
            ttl=ttl,
        )
    raise InvalidMessageError(
        f"message must be a Message or a dict of content, not {type(message).__name__}"
    )


# ---------------------------------------------------------------------------------- pool


class _Transient(Exception):
    """A failure worth retrying (and counted by the node's circuit breaker)."""

    def __init__(self, text: str, status: int | None = None) -> None:
        super().__init__(text)
        self.status = status


def _endpoint(address: str, path: str) -> URL:
    return URL(address.rstrip("/") + path, encoded=True)


def _origin(url: URL) -> str:
    return str(url.origin())


def _remote_error(payload: bytes) -> tuple[str, str]:
    """``(code, message)`` of a JSON error body (best effort)."""
    try:
        data = json.loads(payload)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            return str(err.get("code", "error")), str(err.get("message", ""))[:500]
    except (ValueError, UnicodeDecodeError):
        pass
    return "error", payload[:200].decode("utf-8", "replace")


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, AgentUnreachableError):
        return "circuit_open" if isinstance(exc.__cause__, CircuitOpenError) else "unreachable"
    return "rejected"


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
        msg = _as_message(
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


@dataclass(slots=True)
class _Pending:
    """A send waiting to go in a batch, and where its own result goes."""

    message: Message
    body: bytes
    future: asyncio.Future[tuple[int, bytes, int]]


class _Lane:
    """Sends to one node: how many requests are in flight, and the sends waiting."""

    __slots__ = ("inflight", "pending", "waiters")

    def __init__(self) -> None:
        self.inflight = 0
        self.pending: deque[_Pending] = deque()
        self.waiters: list[asyncio.Future[None]] = []

    def take(self, max_messages: int, max_bytes: int) -> list[_Pending]:
        """The oldest waiting sends that fit one request (at least one)."""
        batch = [self.pending.popleft()]
        size = len(batch[0].body)
        pending = self.pending
        while pending and len(batch) < max_messages:
            nxt = len(pending[0].body) + 1
            if size + nxt > max_bytes:
                break
            size += nxt
            batch.append(pending.popleft())
        return batch

    async def wait(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        await fut

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # an error nobody waits for any more is not "never retrieved"


def _clone(exc: NetworkError) -> NetworkError:
    """A copy of ``exc`` (same type, message, attributes and cause) for one batch member."""
    clone = copy.copy(exc)
    clone.__cause__ = exc.__cause__
    clone.__traceback__ = None
    return clone


def _batch_results(payload: bytes, count: int) -> list[tuple[int, bytes]] | None:
    """Per-message (status, answer) from a batch answer; None when it is not one."""
    try:
        answer = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or len(results) != count:
        return None
    out: list[tuple[int, bytes]] = []
    for r in results:
        status = r.get("status") if isinstance(r, dict) else None
        if isinstance(status, bool) or not isinstance(status, int):
            return None
        if status == 202:
            out.append((202, _DUPLICATE_BODY if r.get("duplicate") else _ACCEPTED_BODY))
        else:
            out.append((status, _dumps({"error": r.get("error")})))
    return out


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
            cfg = dataclasses.replace(
                cfg,
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
        self._lanes: dict[str, _Lane] = {}
        self._closed = False
        self._rng = random.Random()
        self._opened_before = 0
        #: Requests sent so far, retries included.
        self.requests_sent = 0

    @property
    def max_connections(self) -> int:
        """Most TCP connections open at once."""
        return self.config.max_connections

    @property
    def idle_timeout(self) -> float:
        """Seconds an idle connection is kept for reuse."""
        return self.config.idle_timeout

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
            cfg = self.config
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
            cfg = self.config
            breaker = CircuitBreaker(
                f"aos-node:{origin}",
                failure_threshold=cfg.circuit_failure_threshold,
                window_seconds=cfg.circuit_window_seconds,
                recovery_timeout=cfg.circuit_recovery_timeout,
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
        url = _endpoint(address, f"{API_PREFIX}/agents/{quote(agent_id, safe='')}")
        status, payload, _ = await self.exchange("GET", url, b"", what=f"agent {agent_id!r}")
        if status == 404:
            raise UnknownAgentError(f"node {address} does not host agent {agent_id!r}")
        data = self._json_ok(status, payload, address)
        if not isinstance(data, dict):
            raise RemoteError(f"node {address} answered with an unexpected body", status)
        return data

    # -- requests ------------------------------------------------------------------------

    def _delay(self, attempt: int) -> float:
        cfg = self.config
        base = cfg.retry_delay(attempt)
        if cfg.retry_jitter and base > 0:
            base *= 1.0 + self._rng.uniform(-cfg.retry_jitter, cfg.retry_jitter)
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
            code, text = _remote_error(payload)
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
        attempts = self.config.max_attempts
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

    async def _batched(
        self, lane: _Lane, target: str, url: URL, message: Message, body: bytes
    ) -> tuple[int, bytes, int]:
        """Send ``body`` together with others: wait in the node's lane; the oldest waiting
        send takes everything waiting (up to ``max_batch`` messages and ``max_body_bytes``)
        as one request once fewer than ``batch_after`` are in flight. Returns this
        message's own (status, answer, attempts)."""
        item = _Pending(message, body, asyncio.get_running_loop().create_future())
        item.future.add_done_callback(_retrieved)
        lane.pending.append(item)
        try:
            while not item.future.done():
                pending = lane.pending
                if lane.inflight < self.config.batch_after and pending and pending[0] is item:
                    batch = lane.take(self.config.max_batch, self.config.max_body_bytes - 2)
                    lane.inflight += 1
                    try:
                        await self._send_batch(target, url, batch)
                    except BaseException:
                        # cancelled mid-request: the others go back to wait for a new one
                        # (the node deduplicates by message id, so a resend is harmless)
                        lane.pending.extendleft(
                            reversed([p for p in batch if p is not item and not p.future.done()])
                        )
                        raise
                    finally:
                        lane.inflight -= 1
                        lane.wake()
                else:
                    await lane.wait()
        finally:
            if not item.future.done() and item in lane.pending:
                lane.pending.remove(item)  # cancelled while waiting
                lane.wake()
        return item.future.result()

    async def _post_one(self, url: URL, message: Message, body: bytes) -> tuple[int, bytes, int]:
        """One message in a request of its own (retries and the node's circuit included)."""
        return await self.exchange(
            "POST", url, body, what=f"message {message.message_id} to {message.recipient_id!r}"
        )

    async def _send_batch(self, target: str, url: URL, batch: list[_Pending]) -> None:
        """One request for ``batch``; sets every item's result (or error)."""
        if len(batch) == 1:
            only = batch[0]
            try:
                result = await self._post_one(url, only.message, only.body)
            except NetworkError as exc:
                only.future.set_exception(exc)
            else:
                only.future.set_result(result)
            return
        body = b"[" + b",".join(p.body for p in batch) + b"]"
        try:
            status, payload, attempts = await self.exchange(
                "POST",
                url,
                body,
                what=f"{len(batch)} messages to node {target}",
                content_type=CLOUDEVENTS_BATCH,
            )
        except NetworkError as exc:
            for p in batch:
                p.future.set_exception(_clone(exc))
            return
        if status == 413:  # the node takes smaller requests than we do: one by one
            again = batch
        else:
            results = _batch_results(payload, len(batch)) if status == 200 else None
            if results is None:  # the whole request was refused (401, 400, ...): tell each
                for p in batch:
                    p.future.set_result((status, payload, attempts))
                return
            again = []
            for p, (item_status, item_payload) in zip(batch, results):
                if item_status >= 500 or item_status == 429:
                    again.append(p)  # transient for this message: alone, with the retries
                else:
                    p.future.set_result((item_status, item_payload, attempts))
        if again:
            await asyncio.gather(*(self._send_batch(target, url, [p]) for p in again))

    def _json_ok(self, status: int, payload: bytes, address: str) -> Any:
        if status >= 400:
            code, text = _remote_error(payload)
            raise RemoteError(f"node {address} answered HTTP {status} {code}: {text}", status)
        try:
            return json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RemoteError(f"node {address} answered with invalid JSON", status) from exc

    async def get_json(self, address: str, path: str, *, signed: bool = True) -> Any:
        """GET ``address + path`` and return its JSON (:class:`RemoteError` for >= 400)."""
        addr = normalize_address(address)
        status, payload, _ = await self.exchange(
            "GET", _endpoint(addr, path), b"", signed=signed, what=f"GET {path}"
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
        body = encode(message, options, max_bytes=self.config.max_body_bytes)
        url = self._message_urls.get(target)
        if url is None:
            url = self._message_urls[target] = _endpoint(target, f"{API_PREFIX}/messages")
        lane = self._lanes.get(target)
        if lane is None:
            lane = self._lanes[target] = _Lane()
        try:
            if lane.inflight < self.config.batch_after and not lane.pending:
                lane.inflight += 1
                try:
                    status, payload, attempts = await self._post_one(url, message, body)
                finally:
                    lane.inflight -= 1
                    lane.wake()
            else:
                status, payload, attempts = await self._batched(lane, target, url, message, body)
            if status == 404:
                code, text = _remote_error(payload)
                raise UnknownAgentError(
                    f"node {target} does not host agent {recipient!r} ({code}: {text})"
                )
            if status >= 400:
                code, text = _remote_error(payload)
                raise RemoteError(
                    f"node {target} refused message {message.message_id} for {recipient!r}:"
                    f" HTTP {status} {code}: {text}",
                    status,
                )
        except NetworkError as exc:
            if report_failure and self.on_failure is not None:
                try:
                    await self.on_failure(message, options, _failure_reason(exc), exc)
                except Exception:
                    log.exception("could not dead-letter failed message %s", message.message_id)
            raise
        if payload == _ACCEPTED_BODY:
            duplicate = False
        elif payload == _DUPLICATE_BODY:
            duplicate = True
        else:
            try:
                answer = json.loads(payload)
            except (ValueError, UnicodeDecodeError):
                answer = None
            duplicate = isinstance(answer, dict) and answer.get("duplicate") is True
        return SendReceipt(message.message_id, recipient, target, attempts, duplicate)


# ---------------------------------------------------------------------------------- A2A

_TERMINAL = frozenset({"completed", "failed", "canceled", "rejected"})
_STATE_V1 = {
    "submitted": "TASK_STATE_SUBMITTED",
    "working": "TASK_STATE_WORKING",
    "completed": "TASK_STATE_COMPLETED",
    "failed": "TASK_STATE_FAILED",
    "canceled": "TASK_STATE_CANCELED",
    "rejected": "TASK_STATE_REJECTED",
    "input-required": "TASK_STATE_INPUT_REQUIRED",
    "auth-required": "TASK_STATE_AUTH_REQUIRED",
}
_METHODS = {
    "SendMessage": ("send", False),
    "SendStreamingMessage": ("stream", False),
    "GetTask": ("get", False),
    "CancelTask": ("cancel", False),
    "message/send": ("send", True),
    "message/stream": ("stream", True),
    "tasks/get": ("get", True),
    "tasks/cancel": ("cancel", True),
}
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_MAX_ID_TEXT = 200


class _RpcError(Exception):
    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


def _invalid_params(message: str) -> _RpcError:
    return _RpcError(-32602, f"Invalid params: {message}", "INVALID_PARAMS")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _opt_id(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > _MAX_ID_TEXT:
        raise _invalid_params(f"{name} must be a string of at most {_MAX_ID_TEXT} characters")
    return value


def _parse_part(part: Any) -> dict[str, Any]:
    """One A2A part (1.0 or 0.3 shape) in the normalised form used in message content:
    ``{"kind": "text", "text"}``, ``{"kind": "data", "data"}`` or ``{"kind": "file",
    "url" | "raw", "media_type", "filename"}``."""
    if not isinstance(part, dict):
        raise _invalid_params("each part must be an object")
    kind = part.get("kind")
    out: dict[str, Any]
    if "text" in part and kind in (None, "text"):
        if not isinstance(part["text"], str):
            raise _invalid_params("a text part's text must be a string")
        out = {"kind": "text", "text": part["text"]}
    elif "data" in part and kind in (None, "data"):
        out = {"kind": "data", "data": part["data"]}
    elif kind == "file" and isinstance(part.get("file"), dict):
        f = part["file"]
        out = {"kind": "file"}
        if isinstance(f.get("uri"), str):
            out["url"] = f["uri"]
        elif isinstance(f.get("bytes"), str):
            out["raw"] = f["bytes"]
        else:
            raise _invalid_params("a file part needs file.uri or file.bytes")
        if isinstance(f.get("mimeType"), str):
            out["media_type"] = f["mimeType"]
        if isinstance(f.get("name"), str):
            out["filename"] = f["name"]
    elif isinstance(part.get("url"), str) or isinstance(part.get("raw"), str):
        out = {"kind": "file"}
        if isinstance(part.get("url"), str):
            out["url"] = part["url"]
        else:
            out["raw"] = part["raw"]
        media = part.get("mediaType", part.get("media_type"))
        if isinstance(media, str):
            out["media_type"] = media
        if isinstance(part.get("filename"), str):
            out["filename"] = part["filename"]
    else:
        raise _invalid_params("unsupported part: expected text, data, url or raw")
    meta = part.get("metadata")
    if isinstance(meta, dict) and meta:
        out["metadata"] = meta
    return out


def _render_part(part: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
    kind = part.get("kind")
    out: dict[str, Any]
    if kind == "text":
        out = {"kind": "text", "text": part["text"]} if legacy else {"text": part["text"]}
    elif kind == "data":
        data = part["data"]
        if legacy:
            out = {"kind": "data", "data": data if isinstance(data, dict) else {"value": data}}
        else:
            out = {"data": data, "mediaType": "application/json"}
    else:
        if legacy:
            file: dict[str, Any] = {}
            if "url" in part:
                file["uri"] = part["url"]
            else:
                file["bytes"] = part.get("raw", "")
            if part.get("media_type"):
                file["mimeType"] = part["media_type"]
            if part.get("filename"):
                file["name"] = part["filename"]
            out = {"kind": "file", "file": file}
        else:
            out = {"url": part["url"]} if "url" in part else {"raw": part.get("raw", "")}
            if part.get("media_type"):
                out["mediaType"] = part["media_type"]
            if part.get("filename"):
                out["filename"] = part["filename"]
    if part.get("metadata"):
        out["metadata"] = part["metadata"]
    return out


def _reply_parts(content: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The A2A parts of a handler's answer (the RESPONSE content)."""
    parts = content.get("parts")
    if isinstance(parts, list) and parts:
        try:
            return [_parse_part(p) for p in parts]
        except _RpcError:
            pass
    text = content.get("text")
    if isinstance(text, str):
        return [{"kind": "text", "text": text}]
    if set(content) == {"result"}:
        result = content["result"]
        if isinstance(result, str):
            return [{"kind": "text", "text": result}]
        return [{"kind": "data", "data": result}]
    return [{"kind": "data", "data": dict(content)}]


@dataclass
class _A2AMessage:
    message_id: str
    role: str  # "user" | "agent"
    parts: list[dict[str, Any]]
    context_id: str
    task_id: str
    metadata: dict[str, Any] | None = None

    def render(self, legacy: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messageId": self.message_id,
            "contextId": self.context_id,
            "taskId": self.task_id,
            "role": self.role if legacy else ("ROLE_USER" if self.role == "user" else "ROLE_AGENT"),
            "parts": [_render_part(p, legacy) for p in self.parts],
        }
        if self.metadata:
            out["metadata"] = self.metadata
        if legacy:
            out["kind"] = "message"
        return out


@dataclass
class _A2ATask:
    id: str
    context_id: str
    agent_id: str
    state: str = "submitted"
    history: list[_A2AMessage] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    status_message: _A2AMessage | None = None
    timestamp: str = field(default_factory=_stamp)
    runner: asyncio.Task[None] | None = None
    listeners: list[asyncio.Queue[tuple[str, Any]]] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in _TERMINAL

    def status(self, legacy: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state if legacy else _STATE_V1[self.state],
            "timestamp": self.timestamp,
        }
        if self.status_message is not None:
            out["message"] = self.status_message.render(legacy)
        return out

    def render(self, legacy: bool, history_length: int | None = None) -> dict[str, Any]:
        history = self.history
        if history_length is not None:
            history = history[-history_length:] if history_length > 0 else []
        out: dict[str, Any] = {
            "id": self.id,
            "contextId": self.context_id,
            "status": self.status(legacy),
            "artifacts": [_render_artifact(a, legacy) for a in self.artifacts],
            "history": [m.render(legacy) for m in history],
        }
        if legacy:
            out["kind"] = "task"
        return out

    def emit(self, event: tuple[str, Any]) -> None:
        for q in self.listeners:
            q.put_nowait(event)


def _render_artifact(artifact: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
    return {
        "artifactId": artifact["artifact_id"],
        "name": artifact["name"],
        "parts": [_render_part(p, legacy) for p in artifact["parts"]],
    }


def _render_event(task: _A2ATask, event: tuple[str, Any], legacy: bool) -> dict[str, Any]:
    kind, payload = event
    if kind == "artifact":
        art = _render_artifact(payload, legacy)
        if legacy:
            return {
                "kind": "artifact-update",
                "taskId": task.id,
                "contextId": task.context_id,
                "artifact": art,
                "append": False,
                "lastChunk": True,
            }
        return {
            "artifactUpdate": {
                "taskId": task.id,
                "contextId": task.context_id,
                "artifact": art,
                "append": False,
                "lastChunk": True,
            }
        }
    state, message, stamp = payload
    status: dict[str, Any] = {
        "state": state if legacy else _STATE_V1[state],
        "timestamp": stamp,
    }
    if message is not None:
        status["message"] = message.render(legacy)
    if legacy:
        return {
            "kind": "status-update",
            "taskId": task.id,
            "contextId": task.context_id,
            "status": status,
            "final": state in _TERMINAL,
        }
    return {"statusUpdate": {"taskId": task.id, "contextId": task.context_id, "status": status}}


class _A2AEndpoint:
    """The A2A side of a node: agent cards, JSON-RPC and the task table."""

    def __init__(self, node: NetworkProtocol) -> None:
        self.node = node
        self.tasks: OrderedDict[str, _A2ATask] = OrderedDict()
        self.runners: set[asyncio.Task[None]] = set()

    # -- cards ---------------------------------------------------------------------------

    def card(self, info: AgentInfo, base: str) -> dict[str, Any]:
        endpoint = f"{base}/agents/{quote(info.agent_id, safe='')}"
        meta = info.metadata
        card: dict[str, Any] = {
            "name": str(meta.get("name") or info.agent_id),
            "description": str(meta.get("description") or f"AOS agent {info.agent_id!r}"),
            "version": _VERSION,
            "supportedInterfaces": [
                {"url": endpoint, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
                {"url": endpoint, "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
            ],
            "provider": {"organization": "Agent Operating System", "url": base},
            "capabilities": {"streaming": True, "pushNotifications": False},
            "defaultInputModes": ["text/plain", "application/json"],
            "defaultOutputModes": ["text/plain", "application/json"],
            "skills": [
                {
                    "id": cap,
                    "name": cap.replace("_", " "),
                    "description": f"{cap.replace('_', ' ')} (AOS capability {cap!r})",
                    "tags": [cap],
                }
                for cap in info.capabilities
            ],
            # A2A 0.3 fields, for older clients.
            "url": endpoint,
            "preferredTransport": "JSONRPC",
            "protocolVersion": "0.3.0",
        }
        if self.node.config.a2a_auth_token is not None:
            card["securitySchemes"] = {"bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer"}}}
            card["securityRequirements"] = [{"schemes": {"bearer": {"list": []}}}]
        return card

    # -- JSON-RPC ------------------------------------------------------------------------

    @staticmethod
    def rpc_error(
        request_id: Any, code: int, message: str, reason: str | None = None
    ) -> dict[str, Any]:
        err: dict[str, Any] = {"code": code, "message": message}
        if reason:
            err["data"] = [
                {
                    "@type": _ERROR_INFO,
                    "reason": reason,
                    "domain": "a2a-protocol.org",
                    "metadata": {},
                }
            ]
        return {"jsonrpc": "2.0", "id": request_id, "error": err}

    async def handle(self, request: web.Request, agent_id: str, body: bytes) -> web.StreamResponse:
        try:
            rpc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return web.json_response(self.rpc_error(None, -32700, "Parse error: invalid JSON"))
        request_id = rpc.get("id") if isinstance(rpc, dict) else None
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int, type(None))):
            request_id = None
        try:
            if (
                not isinstance(rpc, dict)
                or rpc.get("jsonrpc") != "2.0"
                or not isinstance(rpc.get("method"), str)
            ):
                raise _RpcError(-32600, "Invalid Request: not a JSON-RPC 2.0 request object")
            method = _METHODS.get(rpc["method"])
            if method is None:
                raise _RpcError(-32601, f"Method not found: {rpc['method']}", "METHOD_NOT_FOUND")
            params = rpc.get("params", {})
            if not isinstance(params, dict):
                raise _invalid_params("params must be an object")
            kind, legacy = method
            if kind == "stream":
                return await self.stream(request, request_id, agent_id, params, legacy)
            if kind == "send":
                result = await self.send(agent_id, params, legacy)
            elif kind == "get":
                result = self.get(agent_id, params, legacy)
            else:
                result = await self.cancel(agent_id, params, legacy)
        except _RpcError as exc:
            return web.json_response(self.rpc_error(request_id, exc.code, exc.message, exc.reason))
        return web.Response(
            body=_dumps({"jsonrpc": "2.0", "id": request_id, "result": result}),
            content_type="application/json",
        )

    def _task(self, agent_id: str, params: Mapping[str, Any]) -> _A2ATask:
        task_id = params.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise _invalid_params("id (the task id) is required")
        task = self.tasks.get(task_id)
        if task is None or task.agent_id != agent_id:
            raise _RpcError(-32001, f"Task not found: {task_id}", "TASK_NOT_FOUND")
        return task

    def get(self, agent_id: str, params: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
        task = self._task(agent_id, params)
        length = params.get("historyLength")
        if length is not None and (
            isinstance(length, bool) or not isinstance(length, int) or length < 0
        ):
            raise _invalid_params("historyLength must be a non-negative integer")
        return task.render(legacy, length)

    async def cancel(
        self, agent_id: str, params: Mapping[str, Any], legacy: bool
    ) -> dict[str, Any]:
        task = self._task(agent_id, params)
        if task.terminal:
            raise _RpcError(
                -32002,
                f"Task cannot be canceled: it is already {task.state}",
                "TASK_NOT_CANCELABLE",
            )
        runner = task.runner
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait([runner])
        if not task.terminal:
            self._finish(task, "canceled", "canceled by the client")
        return task.render(legacy)

    def _new_task(
        self, agent_id: str, params: Mapping[str, Any]
    ) -> tuple[_A2ATask, dict[str, Any], bool]:
        msg = params.get("message")
        if not isinstance(msg, dict):
            raise _invalid_params("message is required")
        parts_in = msg.get("parts")
        if not isinstance(parts_in, list) or not parts_in:
            raise _invalid_params("message.parts must be a non-empty list")
        parts = [_parse_part(p) for p in parts_in]
        role = msg.get("role", "ROLE_USER")
        if role not in ("ROLE_USER", "user", "ROLE_UNSPECIFIED"):
            raise _invalid_params("message.role must be the user's")
        if _opt_id(msg.get("taskId"), "message.taskId") is not None:
            task_id = msg["taskId"]
            if task_id not in self.tasks:
                raise _RpcError(-32001, f"Task not found: {task_id}", "TASK_NOT_FOUND")
            raise _RpcError(
                -32004,
                "Unsupported operation: continuing an existing task is not supported;"
                " send a message without taskId",
                "UNSUPPORTED_OPERATION",
            )
        context_id = _opt_id(msg.get("contextId"), "message.contextId") or uuid.uuid4().hex
        message_id = _opt_id(msg.get("messageId"), "message.messageId") or uuid.uuid4().hex
        metadata = msg.get("metadata") if isinstance(msg.get("metadata"), dict) else None
        config = params.get("configuration") or {}
        if not isinstance(config, dict):
            raise _invalid_params("configuration must be an object")
        immediate = bool(config.get("returnImmediately")) or config.get("blocking") is False
        task = _A2ATask(uuid.uuid4().hex, context_id, agent_id)
        user = _A2AMessage(message_id, "user", parts, context_id, task.id, metadata)
        task.history.append(user)
        texts = [p["text"] for p in parts if p["kind"] == "text"]
        data = [p["data"] for p in parts if p["kind"] == "data"]
        content: dict[str, Any] = {
            "text": "\n".join(texts),
            "parts": parts,
            "a2a": {
                "task_id": task.id,
                "context_id": context_id,
                "message_id": message_id,
                "metadata": metadata or {},
            },
        }
        if data:
            content["data"] = data[0]
        self._remember(task)
        return task, content, immediate

    def _remember(self, task: _A2ATask) -> None:
        self.tasks[task.id] = task
        limit = self.node.config.a2a_max_tasks
        if len(self.tasks) > limit:
            for tid in [t.id for t in self.tasks.values() if t.terminal]:
                if len(self.tasks) <= limit:
                    break
                del self.tasks[tid]

    def _start(self, task: _A2ATask, content: dict[str, Any]) -> asyncio.Task[None]:
        runner = asyncio.create_task(self._run(task, content), name=f"aos-a2a:{task.id}")
        task.runner = runner
        self.runners.add(runner)
        runner.add_done_callback(self.runners.discard)
        return runner

    def _set_state(self, task: _A2ATask, state: str, message: _A2AMessage | None = None) -> None:
        task.state = state
        task.timestamp = _stamp()
        task.status_message = message
        task.emit(("status", (state, message, task.timestamp)))

    def _finish(self, task: _A2ATask, state: str, text: str | None = None) -> None:
        msg = None
        if text is not None:
            parts = [{"kind": "text", "text": text}]
            msg = _A2AMessage(uuid.uuid4().hex, "agent", parts, task.context_id, task.id)
        self._set_state(task, state, msg)

    async def _run(self, task: _A2ATask, content: dict[str, Any]) -> None:
        bus = self.node.message_bus
        timeout = self.node.config.a2a_request_timeout
        self._set_state(task, "working")
        try:
            response = await bus.request(
                sender_id=f"a2a:{task.context_id}",
                recipient_id=task.agent_id,
                content=content,
                timeout=timeout,
            )
        except asyncio.CancelledError:
            if not task.terminal:
                self._finish(task, "canceled", "canceled")
            raise
        except RequestTimeoutError:
            self._finish(task, "failed", f"the agent did not answer within {timeout:g}s")
            return
        except RequestFailedError as exc:
            self._finish(task, "failed", f"the agent failed: {exc.reason} ({exc.error})")
            return
        except Exception as exc:
            log.exception("A2A task %s for %s failed", task.id, task.agent_id)
            self._finish(task, "failed", f"the request could not be delivered: {exc}")
            return
        parts = _reply_parts(response.content)
        artifact = {"artifact_id": uuid.uuid4().hex, "name": "response", "parts": parts}
        task.artifacts.append(artifact)
        task.emit(("artifact", artifact))
        reply = _A2AMessage(uuid.uuid4().hex, "agent", parts, task.context_id, task.id)
        task.history.append(reply)
        self._set_state(task, "completed", reply)

    async def send(self, agent_id: str, params: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
        task, content, immediate = self._new_task(agent_id, params)
        runner = self._start(task, content)
        if not immediate:
            await asyncio.wait([runner])
        rendered = task.render(legacy)
        return rendered if legacy else {"task": rendered}

    async def stream(
        self,
        request: web.Request,
        request_id: Any,
        agent_id: str,
        params: Mapping[str, Any],
        legacy: bool,
    ) -> web.StreamResponse:
        task, content, _ = self._new_task(agent_id, params)
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        task.listeners.append(events)
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )

        def frame(result: dict[str, Any]) -> bytes:
            data = _dumps({"jsonrpc": "2.0", "id": request_id, "result": result})
            return b"data: " + data + b"\n\n"

        snapshot = task.render(legacy)
        self._start(task, content)
        try:
            await resp.prepare(request)
            await resp.write(frame(snapshot if legacy else {"task": snapshot}))
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=15.0)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                await resp.write(frame(_render_event(task, event, legacy)))
                if event[0] == "status" and event[1][0] in _TERMINAL:
                    break
            await resp.write_eof()
        except ConnectionResetError:
            log.info("A2A stream for task %s closed by the client", task.id)
        finally:
            with contextlib.suppress(ValueError):
                task.listeners.remove(events)
        return resp

    async def close(self) -> None:
        runners = list(self.runners)
        for r in runners:
            r.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)


# ---------------------------------------------------------------------------------- node


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=_dumps({"error": {"code": code, "message": message}}),
        content_type="application/json",
        headers=headers or None,
    )


class _TooLarge(Exception):
    pass


async def _read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None:
        if length > limit:
            raise _TooLarge(f"request body is {length} bytes; the limit is {limit}")
        return await request.content.read()
    data = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        data += chunk
        if len(data) > limit:
            raise _TooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(data)


class NetworkProtocol:
    """A network node: serves hosted agents over HTTP (node-to-node and A2A 1.0) and sends
    messages to agents hosted on other nodes (spec section 3.4).

    ``NetworkProtocol(config, message_bus=None, *, storage=None, clock=None)``:

    * ``config`` -- a :class:`NetworkConfig` (default: ``NetworkConfig()``);
    * ``message_bus`` -- the local bus; messages for hosted agents are published on it and
      failed sends are dead-lettered there. It must be started by its owner. Without one, the
      node runs its own in-memory bus (:attr:`message_bus`);
    * ``storage`` -- the :class:`StorageManager` holding the agent registry (default: one
      opened from ``config.storage_url``, else in memory);
    * ``clock`` -- time for signatures, backoff and circuit breakers (tests).

    :attr:`app` is the aiohttp application: add routes to it before :meth:`start`. Sending
    works without :meth:`start` (the client side starts lazily); serving needs it. Use
    ``async with NetworkProtocol(...) as node:`` or ``start()``/``stop()``.
    """

    def __init__(
        self,
        config: NetworkConfig | None = None,
        message_bus: MessageBus | None = None,
        *,
        storage: StorageManager | None = None,
        clock: Clock | None = None,
    ) -> None:
        if config is not None and not isinstance(config, NetworkConfig):
            raise ConfigurationError("config must be a NetworkConfig")
        self.config = config or NetworkConfig()
        cfg = self.config
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.node_id = cfg.node_id or f"node-{uuid.uuid4().hex[:12]}"
        self._owns_bus = message_bus is None
        self._bus = message_bus or MessageBus(MessageBusConfig(broker_url="memory://"))
        self._owns_storage = storage is None
        self.storage = storage or StorageManager(cfg.storage_url or "memory://")
        self.registry = AgentRegistry(
            self.storage, cache_seconds=cfg.registry_cache_seconds, clock=self.clock
        )
        self.pool = ConnectionPool(
            config=cfg,
            registry=self.registry,
            clock=self.clock,
            node_id=self.node_id,
            on_failure=self._on_send_failure,
        )
        self._secrets = cfg.verification_secrets
        self._a2a = _A2AEndpoint(self)
        self.app = web.Application(client_max_size=max(cfg.max_body_bytes, 1024 * 1024))
        self._add_routes()
        self._runner: web.AppRunner | None = None
        self._url: str | None = cfg.public_url
        self._own: set[str] = set()
        if cfg.public_url:
            self._own.add(normalize_address(cfg.public_url))
        self._local: set[str] = set()
        self._outbox_locks: dict[str, asyncio.Lock] = {}
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._pump_task: asyncio.Task[None] | None = None
        self._pump_wake: asyncio.Event | None = None
        self._client_lock: asyncio.Lock | None = None
        self._client_ready = False
        self._serving = False
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving" if self._serving else "idle"
        return f"<NetworkProtocol {self.node_id} {self._url or '-'} {state}>"

    # ------------------------------------------------------------------ properties

    @property
    def message_bus(self) -> MessageBus:
        """The local bus (the one given, or the node's own in-memory bus)."""
        return self._bus

    @property
    def url(self) -> str:
        """The node's address (``public_url``, else ``http://host:port`` once started)."""
        if self._url is None:
            raise NetworkError("the node is not started and has no public_url: await start()")
        return self._url

    @property
    def serving(self) -> bool:
        """True while the HTTP server runs."""
        return self._serving

    # ------------------------------------------------------------------ lifecycle

    async def _ensure_client(self) -> None:
        if self._closed:
            raise NetworkError("the node is stopped; create a new NetworkProtocol")
        if self._client_ready:
            return
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._client_ready:
                return
            if self._owns_bus:
                await self._bus.start()
            elif not self._bus.started:
                raise ConfigurationError(
                    "the message bus given to NetworkProtocol is not started: start it first"
                )
            await self.pool.start()
            self._pump_wake = asyncio.Event()
            self._pump_task = asyncio.create_task(
                self._pump(), name=f"aos-net-outbox:{self.node_id}"
            )
            self._client_ready = True

    async def start(self) -> NetworkProtocol:
        """Serve HTTP on ``config.host:config.port`` (port 0: a free one; see :attr:`url`).

        Raises :class:`NetworkError` when the port cannot be bound; the node is then closed
        (everything it started is stopped) and a new one must be created.
        """
        if self._serving:
            return self
        await self._ensure_client()
        try:
            await self._serve()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _serve(self) -> None:
        cfg = self.config
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=cfg.shutdown_timeout,
            keepalive_timeout=cfg.idle_timeout,
        )
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise NetworkError(f"cannot listen on {cfg.host}:{cfg.port}: {exc}") from exc
        self._runner = runner
        port = int(runner.addresses[0][1])
        if cfg.public_url is None:
            host = cfg.host
            if host in ("0.0.0.0", "::", ""):
                host = "127.0.0.1"
                log.warning(
                    "node %s listens on all interfaces; set NetworkConfig.public_url to the"
                    " address other nodes should use",
                    self.node_id,
                )
            if ":" in host:
                host = f"[{host}]"
            self._url = f"http://{host}:{port}"
        own = normalize_address(self.url)
        self._own.add(own)
        for a, b in (("//127.0.0.1:", "//localhost:"), ("//localhost:", "//127.0.0.1:")):
            if a in own:
                self._own.add(own.replace(a, b))
        self._serving = True
        # Local agents registered before the port was known get their address now.
        for agent_id in list(self._local):
            info = await self.registry.get(agent_id)
            if info is not None and info.address is None:
                await self.registry.register(
                    AgentInfo(
                        info.agent_id,
                        self.url,
                        info.capabilities,
                        self.node_id,
                        info.metadata,
                        info.registered_at,
                    )
                )
        if not self._secrets and not cfg.allow_unsigned:
            log.warning(
                "node %s has no auth_secret: node-to-node messages will be refused (401);"
                " set NetworkConfig.auth_secret (or AOS_NETWORK_SECRET)",
                self.node_id,
            )
        log.info("node %s serving at %s", self.node_id, self.url)

    async def stop(self) -> None:
        """Stop serving, cancel running A2A tasks, close connections and owned resources."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
            self._pump_task = None
        await self._a2a.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.pool.close()
        if self._owns_bus:
            await self._bus.stop()
        if self._owns_storage:
            await self.storage.close()

    async def aclose(self) -> None:
        """Alias of :meth:`stop`."""
        await self.stop()

    async def __aenter__(self) -> NetworkProtocol:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ registry

    def _is_local(self, info: AgentInfo) -> bool:
        if info.address is None:
            return info.node_id == self.node_id
        try:
            return normalize_address(info.address) in self._own
        except ConfigurationError:
            return False

    async def register_agent(
        self,
        agent_id: str,
        address: str | None = None,
        capabilities: Iterable[str] | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> AgentInfo:
        """Register an agent: hosted on this node when ``address`` is None (or this node's
        own URL), otherwise on the node at ``address``. ``metadata`` may carry ``name`` and
        ``description`` for its agent card."""
        if not isinstance(agent_id, str) or not agent_id:
            raise InvalidMessageError("agent_id must be a non-empty string")
        caps = tuple(_capabilities(capabilities))
        addr = normalize_address(address) if address is not None else None
        local = addr is None or addr in self._own
        if local and addr is None and self._serving:
            addr = self.url
        info = AgentInfo(
            agent_id,
            addr,
            caps,
            self.node_id if local else None,
            dict(metadata or {}),
            self.clock.now(),
        )
        await self.registry.register(info)
        if local:
            self._local.add(agent_id)
        else:
            self._local.discard(agent_id)
        return info

    async def unregister_agent(self, agent_id: str) -> bool:
        """Remove an agent from the registry; True when it was there."""
        self._local.discard(agent_id)
        return await self.registry.unregister(agent_id)

    async def discover_agents(self, capabilities: Iterable[str] | None = None) -> list[AgentInfo]:
        """Registered agents that have every capability in ``capabilities`` (all when None)."""
        return await self.registry.find(capabilities)

    async def hosted_agents(self) -> list[AgentInfo]:
        """Agents hosted on this node."""
        return [a for a in await self.registry.list() if self._is_local(a)]

    async def _hosted(self, agent_id: str) -> AgentInfo | None:
        info = await self.registry.get(agent_id)
        return info if info is not None and self._is_local(info) else None

    async def add_peer(self, url: str) -> list[AgentInfo]:
        """Import the agents of the node at ``url`` from their agent cards (their skills
        become capabilities; a node serving no cards is read from its signed agent index);
        returns the imported entries."""
        await self._ensure_client()
        address = normalize_address(url)
        index = await self.pool.get_json(address, f"{API_PREFIX}/agents")
        if not isinstance(index, dict) or not isinstance(index.get("agents"), list):
            raise RemoteError(f"node {address} returned an invalid agent index")
        node_id = index.get("node_id") if isinstance(index.get("node_id"), str) else None
        entries: list[dict[str, Any]] = [
            a
            for a in index["agents"]
            if isinstance(a, dict) and isinstance(a.get("agent_id"), str) and a["agent_id"]
        ]

        async def card(entry: dict[str, Any]) -> dict[str, Any]:
            card_url = f"{address}/agents/{quote(entry['agent_id'], safe='')}{CARD_PATH}"
            try:
                data = await self.pool.get_json(address, card_url[len(address) :], signed=False)
            except RemoteError as exc:
                if exc.status != 404:
                    raise
                caps = entry.get("capabilities")
                skills = [{"id": c} for c in caps] if isinstance(caps, list) else []
                return {"skills": skills}
            if not isinstance(data, dict):
                raise RemoteError(f"node {address} returned an invalid card for {entry!r}")
            data["card_url"] = card_url
            return data

        cards = await asyncio.gather(*(card(e) for e in entries))
        imported: list[AgentInfo] = []
        for entry, data in zip(entries, cards):
            agent_id = entry["agent_id"]
            if agent_id in self._local:
                log.warning("peer %s also hosts %r; keeping the local agent", address, agent_id)
                continue
            skills: list[Any] = data["skills"] if isinstance(data.get("skills"), list) else []
            caps = [s["id"] for s in skills if isinstance(s, dict) and isinstance(s.get("id"), str)]
            metadata = {"name": str(data.get("name") or agent_id)}
            if data.get("description"):
                metadata["description"] = str(data["description"])
            if data.get("card_url"):
                metadata["card_url"] = str(data["card_url"])
            info = AgentInfo(
                agent_id,
                address,
                tuple(_capabilities(caps)),
                node_id,
                metadata,
                self.clock.now(),
            )
            await self.registry.register(info)
            imported.append(info)
        return imported

    # ------------------------------------------------------------------ sending

    async def send_message(
        self,
        sender_id: str,
        recipient_id: str,
        message: Message | Mapping[str, Any],
        *,
        message_type: MessageType | str | None = None,
        priority: MessagePriority | int | str | None = None,
        correlation_id: str | None = None,
        ttl: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> SendReceipt:
        """Send ``message`` (a :class:`Message`, or a dict used as its content) from
        ``sender_id`` to ``recipient_id``, wherever it is hosted.

        Raises :class:`UnknownAgentError` when the recipient is not registered (or its node
        does not host it), :class:`AgentUnreachableError` when its node cannot be reached
        (after the retries, or at once while the node's circuit is open) and
        :class:`RemoteError` when the node refuses the message. A message that was not
        delivered is in ``get_failed_messages(sender_id)``.
        """
        if not isinstance(sender_id, str) or not sender_id:
            raise InvalidMessageError("sender_id must be a non-empty string")
        if not isinstance(recipient_id, str) or not recipient_id:
            raise InvalidMessageError("recipient_id must be a non-empty string")
        msg = _as_message(
            message,
            sender_id=sender_id,
            recipient_id=recipient_id,
            default_sender=sender_id,
            message_type=message_type,
            priority=priority,
            correlation_id=correlation_id,
            ttl=ttl,
            metadata=metadata,
        )
        return await self._route(msg, DEFAULT_OPTIONS)

    async def _route(
        self,
        message: Message,
        options: DeliveryOptions,
        address: str | None = None,
        *,
        report_failure: bool = True,
    ) -> SendReceipt:
        await self._ensure_client()
        recipient = message.recipient_id
        assert recipient is not None
        if address is None:
            info = await self.registry.get(recipient)
            if info is None:
                raise UnknownAgentError(f"agent {recipient!r} is not registered")
            if self._is_local(info):
                return await self._publish_local(message, options)
            if info.address is None:
                raise UnknownAgentError(f"agent {recipient!r} is registered without an address")
            address = info.address
        elif normalize_address(address) in self._own:
            return await self._publish_local(message, options)
        return await self.pool.deliver(
            message, address=address, options=options, report_failure=report_failure
        )

    async def _publish_local(self, message: Message, options: DeliveryOptions) -> SendReceipt:
        result = await self._bus.publish(message, **_publish_options(options))
        assert message.recipient_id is not None
        return SendReceipt(message.message_id, message.recipient_id, None, 1, result.duplicate)

    async def connect(self, agent_id: str, address: str | None = None) -> Connection:
        """A persistent :class:`Connection` to ``agent_id`` on the node at ``address``
        (default: its registered address). The node is asked whether it hosts the agent:
        :class:`UnknownAgentError` if not, :class:`AgentUnreachableError` if it does not
        answer. Sends through the connection are dead-lettered on failure like
        :meth:`send_message`."""
        await self._ensure_client()
        if address is None:
            address = await self.pool.resolve(agent_id)
        addr = normalize_address(address)
        if addr in self._own:
            if await self._hosted(agent_id) is None:
                raise UnknownAgentError(f"this node does not host agent {agent_id!r}")
        else:
            await self.pool.check_agent(addr, agent_id)

        async def send(message: Message) -> SendReceipt:
            return await self._route(message, DEFAULT_OPTIONS, addr)

        return Connection(self.pool, addr, agent_id, sender=send)

    # ------------------------------------------------------------------ failed sends

    def _lock(self, queue: str) -> asyncio.Lock:
        lock = self._outbox_locks.get(queue)
        if lock is None:
            lock = self._outbox_locks[queue] = asyncio.Lock()
        return lock

    async def _on_send_failure(
        self, message: Message, options: DeliveryOptions, reason: str, exc: BaseException
    ) -> None:
        await self._dead_letter_outgoing(message, options, reason, error_text(exc))

    async def _dead_letter_outgoing(
        self, message: Message, options: DeliveryOptions, reason: str, error: str
    ) -> None:
        """Put a message that could not be delivered into the dead-letter queue of its
        sender's outbox (through the broker seam: enqueue, lock, dead-letter)."""
        bus = self._bus
        broker = bus.broker
        queue = outbox_queue(message.sender_id)
        expires = message.timestamp.timestamp() + message.ttl if message.ttl is not None else None
        async with self._lock(queue):
            try:
                await broker.send(
                    [
                        Envelope(
                            queue,
                            message.message_id,
                            message.priority.value,
                            body=encode(message, options),
                            expires_at=expires,
                        )
                    ]
                )
            except DuplicateMessageError:
                log.info("message %s is already in %s", message.message_id, queue)
                return
            others: list[Delivery] = []
            try:
                while True:
                    batch = await broker.receive(queue, 64, bus.config.lock_seconds)
                    if not batch:
                        log.warning("message %s vanished from %s", message.message_id, queue)
                        return
                    mine = [d for d in batch if d.message_id == message.message_id]
                    others.extend(d for d in batch if d.message_id != message.message_id)
                    if mine:
                        d = mine[0]
                        await broker.dead_letter(
                            queue, Settlement(d.message_id, d.token), reason=reason, error=error
                        )
                        log.info(
                            "send of %s to %r failed (%s); dead-lettered in %s",
                            message.message_id,
                            message.recipient_id,
                            reason,
                            queue,
                        )
                        return
            finally:
                for d in others:
                    await broker.release(queue, Settlement(d.message_id, d.token))

    async def get_failed_messages(self, sender_id: str, limit: int = 100) -> list[Message]:
        """``sender_id``'s messages that could not be delivered, oldest first; each one's
        metadata says why (``aos.dead_letter.reason``/``.error``)."""
        await self._ensure_client()
        return await self._bus.get_dead_letter_messages(outbox_queue(sender_id), limit)

    async def resubmit_failed(self, sender_id: str | None = None) -> ResubmitReport:
        """Send ``sender_id``'s failed messages (everyone's when None) again, now. Those that
        fail again go back to the dead-letter queue."""
        await self._ensure_client()
        broker = self._bus.broker
        if sender_id is not None:
            queues = [outbox_queue(sender_id)]
        else:
            queues = [q for q in await broker.queues() if q.startswith(OUTBOX_PREFIX)]
        report = ResubmitReport()
        for queue in queues:
            async with self._lock(queue):
                count = await broker.dead_letter_depth(queue)
                if count:
                    for dl in await broker.dead_letters(queue, count):
                        try:
                            await broker.resubmit(queue, dl.message_id)
                        except DuplicateMessageError:
                            continue
            delivered, failed = await self._drain(queue)
            report.delivered.extend(delivered)
            report.failed.extend(failed)
        return report

    async def _drain(self, queue: str) -> tuple[list[str], list[str]]:
        """Send every live message of an outbox queue; dead-letter those that fail."""
        bus = self._bus
        broker = bus.broker
        delivered: list[str] = []
        failed: list[str] = []
        async with self._lock(queue):
            while True:
                batch = await broker.receive(queue, 16, bus.config.lock_seconds)
                if not batch:
                    break
                for d in batch:
                    settle = Settlement(d.message_id, d.token)
                    if d.expires_at is not None and d.expires_at <= bus.clock.now():
                        await broker.dead_letter(queue, settle, reason="expired")
                        failed.append(d.message_id)
                        continue
                    try:
                        if d.message is not None:
                            msg, options = d.message, d.options
                        else:
                            limit = max(self.config.max_body_bytes, bus.config.max_message_bytes)
                            msg, options = decode(d.body or b"", max_bytes=limit)
                    except MessagingError as exc:
                        await broker.dead_letter(
                            queue, settle, reason="undecodable", error=error_text(exc)
                        )
                        failed.append(d.message_id)
                        continue
                    try:
                        await self._route(msg, options, report_failure=False)
                    except MessagingError as exc:
                        reason = (
                            "unknown_agent"
                            if isinstance(exc, UnknownAgentError)
                            else _failure_reason(exc)
                        )
                        await broker.dead_letter(
                            queue, settle, reason=reason, error=error_text(exc)
                        )
                        failed.append(d.message_id)
                        continue
                    await broker.ack(queue, [settle])
                    delivered.append(d.message_id)
        return delivered, failed

    async def _pump(self) -> None:
        """Deliver what was put back into outbox queues (``bus.resubmit``)."""
        wake = self._pump_wake
        assert wake is not None
        interval = self.config.outbox_poll_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=interval)
            wake.clear()
            try:
                broker = self._bus.broker
                for queue in await broker.queues():
                    if queue.startswith(OUTBOX_PREFIX) and await broker.depth(queue) > 0:
                        await self._drain(queue)
            except BrokerClosedError:
                continue
            except Exception:
                log.exception("the network outbox pump failed; retrying")

    def wake_outbox(self) -> None:
        """Ask the outbox pump to look for resubmitted messages now."""
        if self._pump_wake is not None:
            self._pump_wake.set()

    # ------------------------------------------------------------------ server

    def _add_routes(self) -> None:
        r = self.app.router
        r.add_get(f"{API_PREFIX}/health", self._on_health)
        r.add_get(f"{API_PREFIX}/agents", self._on_agents)
        r.add_get(f"{API_PREFIX}/agents/{{agent_id}}", self._on_agent)
        r.add_post(f"{API_PREFIX}/messages", self._on_message)
        if self.config.a2a_enabled:
            r.add_get(f"/agents/{{agent_id}}{CARD_PATH}", self._on_card)
            r.add_post("/agents/{agent_id}", self._on_rpc)

    def _auth_headers(self, request: web.Request) -> web.Response | None:
        """Early 401 for requests that cannot be valid whatever their body."""
        if not self._secrets:
            if self.config.allow_unsigned:
                return None
            return _error(
                401,
                "unauthorized",
                "this node has no auth_secret configured: node-to-node requests are refused",
            )
        try:
            _check_timestamp(
                request.headers.get(HEADER_TIMESTAMP),
                self.clock.now(),
                self.config.signature_max_age,
            )
        except _AuthFailure as exc:
            return _error(401, "unauthorized", str(exc))
        if not request.headers.get(HEADER_SIGNATURE):
            return _error(401, "unauthorized", f"missing {HEADER_SIGNATURE} header")
        return None

    def _auth_body(self, request: web.Request, body: bytes) -> web.Response | None:
        if not self._secrets:
            return None
        try:
            _verify(
                self._secrets,
                request.method,
                request.raw_path,
                request.headers.get(HEADER_TIMESTAMP),
                request.headers.get(HEADER_SIGNATURE),
                body,
                now=self.clock.now(),
                max_age=self.config.signature_max_age,
            )
        except _AuthFailure as exc:
            return _error(401, "unauthorized", str(exc))
        return None

    async def _authenticated_get(self, request: web.Request) -> web.Response | None:
        denied = self._auth_headers(request)
        if denied is not None:
            return denied
        try:
            body = await _read_body(request, self.config.max_body_bytes)
        except _TooLarge as exc:
            return _error(413, "payload_too_large", str(exc))
        return self._auth_body(request, body)

    async def _on_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok", "node_id": self.node_id})

    async def _on_agents(self, request: web.Request) -> web.StreamResponse:
        try:
            denied = await self._authenticated_get(request)
            if denied is not None:
                return denied
            agents = [
                {
                    "agent_id": a.agent_id,
                    "capabilities": list(a.capabilities),
                    "card_path": f"/agents/{quote(a.agent_id, safe='')}{CARD_PATH}",
                }
                for a in await self.hosted_agents()
            ]
            return web.json_response({"node_id": self.node_id, "url": self.url, "agents": agents})
        except Exception as exc:
            log.exception("agent index failed")
            return _error(500, "internal_error", error_text(exc))

    async def _on_agent(self, request: web.Request) -> web.StreamResponse:
        try:
            denied = await self._authenticated_get(request)
            if denied is not None:
                return denied
            agent_id = request.match_info["agent_id"]
            info = await self._hosted(agent_id)
            if info is None:
                return _error(404, "unknown_agent", f"this node does not host agent {agent_id!r}")
            return web.json_response(
                {
                    "agent_id": info.agent_id,
                    "capabilities": list(info.capabilities),
                    "node_id": self.node_id,
                }
            )
        except Exception as exc:
            log.exception("agent look-up failed")
            return _error(500, "internal_error", error_text(exc))

    async def _on_message(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._accept_message(request)
        except Exception as exc:  # never let a request take the node down
            log.exception("handling an incoming message failed")
            return _error(500, "internal_error", error_text(exc))

    async def _accept_message(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        denied = self._auth_headers(request)
        if denied is not None:
            return denied
        try:
            body = await _read_body(request, cfg.max_body_bytes)
        except _TooLarge as exc:
            return _error(413, "payload_too_large", str(exc))
        denied = self._auth_body(request, body)
        if denied is not None:
            return denied
        if request.content_type == CLOUDEVENTS_BATCH:
            return await self._accept_batch(body)
        status, code, text, duplicate = await self._admit(body)
        if status == 202:
            return _accepted(duplicate)
        return _error(status, code, text)

    async def _accept_batch(self, body: bytes) -> web.StreamResponse:
        """A CloudEvents JSON batch: each message admitted on its own, one result each
        (``200 {"results": [{"id", "status", "duplicate" | "error"}, ...]}`` in order)."""
        try:
            events = decode_batch(body, max_bytes=self.config.max_body_bytes)
        except DecodeError as exc:
            return _error(400, "bad_request", f"not a CloudEvents batch: {exc}")
        if len(events) > MAX_BATCH_MESSAGES:
            return _error(
                413, "payload_too_large", f"{len(events)} messages; at most {MAX_BATCH_MESSAGES}"
            )
        results: list[dict[str, Any]] = []
        for event in events:
            status, code, text, duplicate = await self._admit(event)
            event_id = event.get("id") if isinstance(event, dict) else None
            result: dict[str, Any] = {
                "id": event_id if isinstance(event_id, str) else None,
                "status": status,
            }
            if status == 202:
                result["duplicate"] = duplicate
            else:
                result["error"] = {"code": code, "message": text}
            results.append(result)
        return web.Response(
            status=200, body=_dumps({"results": results}), content_type="application/json"
        )

    async def _admit(self, envelope: bytes | Any) -> tuple[int, str, str, bool]:
        """Decode one envelope (bytes, or an event parsed from a batch) and publish it on the
        bus: ``(status, error code, error text, duplicate)``, status 202 when accepted."""
        cfg = self.config
        bus = self._bus
        security = bus.security
        keys = security.content_key if security is not None else None
        try:
            if isinstance(envelope, bytes):
                message, options = decode(envelope, max_bytes=cfg.max_body_bytes, keys=keys)
            else:
                message, options = decode_event(envelope, max_bytes=cfg.max_body_bytes, keys=keys)
        except DecryptionError as exc:
            return 400, "bad_request", f"content cannot be decrypted here: {exc}", False
        except DecodeError as exc:
            return 400, "bad_request", f"not a valid AOS CloudEvents envelope: {exc}", False
        recipient = message.recipient_id
        if recipient is None:
            return 400, "bad_request", "the message names no recipient (aosrecipient)", False
        if await self._hosted(recipient) is None:
            return 404, "unknown_agent", f"this node does not host agent {recipient!r}", False
        if not bus.started:
            return 503, "unavailable", "the node's message bus is not running", False
        try:
            duplicate = await self._publish_incoming(bus, message, options)
        except DuplicateMessageError:
            return 202, "", "", True
        except QueueFullError as exc:
            return 503, "queue_full", str(exc), False
        except PermissionDeniedError as exc:
            return 403, "forbidden", str(exc), False
        except MessageTooLargeError as exc:
            return 413, "payload_too_large", str(exc), False
        except InvalidMessageError as exc:
            return 400, "bad_request", str(exc), False
        except BrokerClosedError as exc:
            return 503, "unavailable", str(exc), False
        except MessagingError as exc:
            log.exception("publishing incoming message %s failed", message.message_id)
            return 500, "internal_error", error_text(exc), False
        return 202, "", "", duplicate

    async def _publish_incoming(
        self, bus: MessageBus, message: Message, options: DeliveryOptions
    ) -> bool:
        """Publish a message that came over the network, deduplicated on its id (a retry or
        a replay is not delivered twice); True when it was a duplicate."""
        if options is DEFAULT_OPTIONS and not bus.broker.needs_bytes:
            # An in-process engine: deduplicate here (this record is exactly as durable as
            # the queue itself) and let the bus take its fast publish path.
            key = f"{message.recipient_id}\x1f{message.message_id}"
            if not self._first_time(key, bus):
                return True
            try:
                return (await bus.publish(message)).duplicate
            except BaseException:
                self._seen.pop(key, None)
                raise
        key_or_id = options.idempotency_key or f"net:{message.message_id}"
        result = await bus.publish(message, **_publish_options(options, key_or_id))
        return result.duplicate

    def _first_time(self, key: str, bus: MessageBus) -> bool:
        """Record ``key`` as seen; False when it was seen within the bus's dedup window."""
        seen = self._seen
        now = bus.clock.now()
        while seen:
            oldest, expires = next(iter(seen.items()))
            if expires > now and len(seen) < _MAX_SEEN:
                break
            del seen[oldest]
        if key in seen:
            return False
        seen[key] = now + bus.config.dedup_window_seconds
        return True

    async def _on_card(self, request: web.Request) -> web.StreamResponse:
        try:
            agent_id = request.match_info["agent_id"]
            info = await self._hosted(agent_id)
            if info is None:
                return _error(404, "unknown_agent", f"this node does not host agent {agent_id!r}")
            base = self.config.public_url or f"{request.scheme}://{request.host}"
            return web.json_response(self._a2a.card(info, base))
        except Exception as exc:
            log.exception("agent card failed")
            return _error(500, "internal_error", error_text(exc))

    async def _on_rpc(self, request: web.Request) -> web.StreamResponse:
        try:
            token = self.config.a2a_auth_token
            if token is not None:
                given = request.headers.get("Authorization", "")
                expected = f"Bearer {token}"
                if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
                    return _error(
                        401,
                        "unauthorized",
                        "a bearer token is required",
                        **{"WWW-Authenticate": "Bearer"},
                    )
            agent_id = request.match_info["agent_id"]
            if await self._hosted(agent_id) is None:
                return _error(404, "unknown_agent", f"this node does not host agent {agent_id!r}")
            try:
                body = await _read_body(request, self.config.max_body_bytes)
            except _TooLarge as exc:
                return _error(413, "payload_too_large", str(exc))
            if not self._bus.started:
                return _error(503, "unavailable", "the node's message bus is not running")
            return await self._a2a.handle(request, agent_id, body)
        except Exception as exc:
            log.exception("A2A request failed")
            return web.json_response(
                _A2AEndpoint.rpc_error(None, -32603, f"Internal error: {error_text(exc)}"),
                status=500,
            )


def _publish_options(
    options: DeliveryOptions, idempotency_key: str | None = None
) -> dict[str, Any]:
    """``bus.publish`` keyword options carrying a message's delivery options across a node."""
    out: dict[str, Any] = {}
    if options.delivery_mode is not DEFAULT_OPTIONS.delivery_mode:
        out["delivery_mode"] = options.delivery_mode
    key = idempotency_key or options.idempotency_key
    if key is not None:
        out["idempotency_key"] = key
    if options.retry_policy is not None:
        out["retry_policy"] = options.retry_policy
    return out


def _accepted(duplicate: bool) -> web.Response:
    return web.Response(
        status=202,
        body=_DUPLICATE_BODY if duplicate else _ACCEPTED_BODY,
        content_type="application/json",
    )
