"""Agents on other hosts: the node, :class:`NetworkProtocol`.

``start()`` serves HTTP (aiohttp) on the configured host and port; a message that arrives
for an agent hosted on the node is published on the node's
:class:`~AgentOperatingSystem.messaging.core.bus.MessageBus`. Agents are known through an
:class:`~.registry.AgentRegistry` kept in a
:class:`~AgentOperatingSystem.storage.manager.StorageManager`, so processes that share the
store (a SQLite file) share the registry; ``add_peer(url)`` imports another node's agents
from their A2A agent cards instead.

Served routes
-------------
``POST /aos/v1/messages`` takes one message, or a CloudEvents JSON batch (a JSON array of up
to ``MAX_BATCH_MESSAGES`` envelopes, signed as one body: each message is admitted on its own
and the answer is ``200 {"results": [{"id", "status": 202, "duplicate"} | {"id", "status":
4xx/5xx, "error"}]}`` in order; a body that is not such an array is refused as a whole,
``400``, as is an unsigned or oversize one). One message is answered ``202
{"accepted":true,"duplicate":false}`` (``"duplicate":true`` when the node had it already).
Errors carry ``{"error": {"code": ..., "message": ...}}``: ``400 bad_request``, ``401
unauthorized`` (unsigned, wrongly signed, or a timestamp older than ``signature_max_age``,
see :mod:`.auth`; or a copy of a request already accepted, see :mod:`.replay`), ``404
unknown_agent``, ``413 payload_too_large``, ``503
queue_full``/``unavailable``. Also served: ``GET /aos/v1/health`` (public), ``GET
/aos/v1/agents`` and ``GET /aos/v1/agents/{agent_id}`` (signed), and the A2A routes
(:mod:`.a2a`).

The parts
---------
:mod:`.wire` (paths, media types, answers), :mod:`.auth` (HMAC signing), :mod:`.registry`
(where agents are), :mod:`.hosting` (which of them this node hosts), :mod:`.pool` and
:mod:`.transport` (sending, with retries and a circuit per node) and :mod:`.lanes`
(batching), :mod:`.intake` (what arrives), :mod:`.outbox` (failed sends, dead-lettered and
sent again), :mod:`.replay` (each signed request accepted once), :mod:`.relay` (the local
queues of agents hosted elsewhere, and their answers, sent on), :mod:`.peers` (importing a
node's agents), :mod:`.server` (the HTTP server), :mod:`.connections` (what a client may
hold of it: limits and timeouts, ``NetworkConfig.limits``), :mod:`.a2a` (A2A 1.0).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Awaitable, Callable, Iterable, Mapping, Self
from urllib.parse import quote

from aiohttp import web

from ...config.messagebus import MessageBusConfig
from ...config.network import NetworkConfig
from ...storage.manager import StorageManager
from ..clock import SYSTEM_CLOCK, Clock
from ..codec.envelope import decode_batch
from ..core.bus import MessageBus
from ..errors import (
    ConfigurationError,
    DecodeError,
    InvalidMessageError,
    NetworkError,
    UnknownAgentError,
    error_text,
)
from ..policy import DeliveryOptions
from ..types import Message, MessagePriority, MessageType
from .a2a import A2AEndpoint
from .a2a.conversations import ConversationLog
from .a2a.desk import TaskDesk
from .auth import RequestAuth
from .cloudevents import CloudEventsEndpoint
from .hosting import HostedAgents
from .intake import Intake, Outcome, Refusal, batch_result, publish_options
from .outbox import Outbox
from .peers import peer_agents
from .pool import Connection, ConnectionPool
from .registry import AgentInfo, AgentRegistry
from .relay import Relay
from .replay import ReplayCache
from .resource import AsyncResource
from .sending import ResubmitReport, SendReceipt, as_message, send_options
from .server import HttpServer
from .wire import (
    API_PREFIX,
    CARD_PATH,
    CLOUDEVENTS_BATCH,
    MAX_BATCH_MESSAGES,
    BodyTooLarge,
    accepted_response,
    dumps,
    error_response,
    log,
    normalize_address,
    read_body,
)

# The node's parts are re-exported from one place, the spec's import path
# (:mod:`AgentOperatingSystem.messaging.network_protocol`).
__all__ = ["NetworkProtocol"]

#: An answer to a signed request whose signature has been checked.
_Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NetworkProtocol(AsyncResource):
    """A network node: serves hosted agents over HTTP (node-to-node and A2A 1.0) and sends
    messages to agents hosted on other nodes (spec section 3.4).

    ``NetworkProtocol(config, message_bus=None, *, storage=None, clock=None,
    conversations=None)``:

    * ``config`` -- a :class:`NetworkConfig` (default: ``NetworkConfig()``);
    * ``message_bus`` -- the local bus; messages for hosted agents are published on it and
      failed sends are dead-lettered there. It must be started by its owner. Without one, the
      node runs its own in-memory bus (:attr:`message_bus`);
    * ``storage`` -- the :class:`StorageManager` holding the agent registry (default: one
      opened from ``config.storage_url``, else in memory);
    * ``clock`` -- time for signatures, backoff and circuit breakers (tests);
    * ``conversations`` -- a ConversationSystem: the A2A tasks' turns are recorded in the
      conversation of their ``contextId`` (see :mod:`.a2a.conversations`).

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
        conversations: ConversationLog | None = None,
    ) -> None:
        if config is not None and not isinstance(config, NetworkConfig):
            raise ConfigurationError("config must be a NetworkConfig")
        self.config = cfg = config or NetworkConfig()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.node_id = cfg.node_id or f"node-{uuid.uuid4().hex[:12]}"
        self._owns_bus = message_bus is None
        self._bus = message_bus or MessageBus(MessageBusConfig(broker_url="memory://"))
        self._owns_storage = storage is None
        self.storage = storage or StorageManager(cfg.registry.storage_url or "memory://")
        self.registry = AgentRegistry(
            self.storage, cache_seconds=cfg.registry.cache_seconds, clock=self.clock
        )
        self._agents = HostedAgents(self.registry, self.node_id, self.clock, cfg.public_url)
        self._outbox = Outbox(self._bus, cfg, self._route)
        self.pool = ConnectionPool(
            config=cfg,
            registry=self.registry,
            clock=self.clock,
            node_id=self.node_id,
            on_failure=self._outbox.on_send_failure,
        )
        # remote agents' queues on the local bus, sent on to their nodes (see .relay)
        self._relay = Relay(self._bus, self._send_relayed, self._serving_url)
        self._auth = RequestAuth(cfg, self.clock)
        self._replays = ReplayCache(self.storage, cfg, self.clock)
        self._intake = Intake(self._bus, cfg)
        self._a2a = A2AEndpoint(
            cfg,
            self._bus,
            self._agents.get,
            storage=self.storage,
            listing=self._agents.list,
            conversations=conversations,
        )
        self.app = web.Application(client_max_size=max(cfg.max_body_bytes, 1024 * 1024))
        self._add_routes()
        self._server = HttpServer(self.app, cfg, self.node_id, clock=self.clock)
        self._url: str | None = cfg.public_url
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

    @property
    def tasks(self) -> TaskDesk:
        """The node's A2A tasks (what the dashboard's inbox of parked tasks reads)."""
        return self._a2a.desk

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
            self._outbox.start(name=f"aos-net-outbox:{self.node_id}")
            await self._relay.start()
            self._client_ready = True

    async def start(self) -> Self:
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
        listening = await self._server.start()
        if self._url is None:
            self._url = listening
        self._agents.add_own(self.url)
        self._replays.start(name=f"aos-net-replays:{self.node_id}")
        await self._a2a.start()
        self._serving = True
        # Local agents registered before the port was known get their address now.
        await self._agents.readdress(self.url)
        if not self._auth.secrets and not self.config.auth.allow_unsigned:
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
        await self._relay.close()
        await self._outbox.stop()
        await self._a2a.close()
        await self._server.stop()
        await self._replays.stop()
        await self.pool.close()
        if self._owns_bus:
            await self._bus.stop()
        if self._owns_storage:
            await self.storage.close()

    aclose = stop

    # ------------------------------------------------------------------ registry

    async def register_agent(
        self,
        agent_id: str,
        address: str | None = None,
        capabilities: Iterable[str] | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> AgentInfo:
        """Register an agent: hosted on this node when ``address`` is None (or this node's
        own URL), otherwise on the node at ``address``: then its queue on the local bus is
        relayed there (see :mod:`.relay`), so ``bus.publish`` and ``bus.request`` reach it.
        ``metadata`` may carry ``name`` and ``description`` for its agent card."""
        url = self.url if self._serving else None
        info = await self._agents.register(agent_id, address, capabilities, metadata, url)
        await self._relay_agent(info)
        return info

    async def unregister_agent(self, agent_id: str) -> bool:
        """Remove an agent from the registry; True when it was there."""
        await self._relay.drop(agent_id)
        return await self._agents.unregister(agent_id)

    async def _relay_agent(self, info: AgentInfo) -> None:
        """Relay the local queue of an agent hosted elsewhere to its node (``bus.publish``
        and ``bus.request`` then reach it); stop relaying one hosted here."""
        if info.address is not None and not self._agents.is_local(info):
            await self._relay.forward(info.agent_id, info.address)
        else:
            await self._relay.drop(info.agent_id)

    def _serving_url(self) -> str | None:
        """Where answers to this node's relayed requests come back (None: not serving)."""
        return self._url if self._serving else None

    async def _send_relayed(self, message: Message, options: DeliveryOptions, address: str) -> None:
        """Send a relayed message over the signed transport (a failure is raised: the relay's
        consume loop retries it, then dead-letters it)."""
        await self._ensure_client()
        await self.pool.deliver(message, address=address, options=options, report_failure=False)

    async def discover_agents(self, capabilities: Iterable[str] | None = None) -> list[AgentInfo]:
        """Registered agents that have every capability in ``capabilities`` (all when None)."""
        return await self.registry.find(capabilities)

    async def hosted_agents(self) -> list[AgentInfo]:
        """Agents hosted on this node."""
        return await self._agents.list()

    async def add_peer(self, url: str) -> list[AgentInfo]:
        """Import the agents of the node at ``url`` from their agent cards (their skills
        become capabilities; a node serving no cards is read from its signed agent index);
        returns the imported entries."""
        await self._ensure_client()
        address = normalize_address(url)
        imported = await peer_agents(self.pool, address, self.clock, self._agents.local)
        for info in imported:
            await self.registry.register(info)
            await self._relay_agent(info)
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
        msg = as_message(
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
        return await self._route(msg, send_options())

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
            if self._agents.is_local(info):
                return await self._publish_local(message, options)
            if info.address is None:
                raise UnknownAgentError(f"agent {recipient!r} is registered without an address")
            address = info.address
        elif self._agents.is_own(address):
            return await self._publish_local(message, options)
        return await self.pool.deliver(
            message, address=address, options=options, report_failure=report_failure
        )

    async def _publish_local(self, message: Message, options: DeliveryOptions) -> SendReceipt:
        result = await self._bus.publish(message, **publish_options(options))
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
        if self._agents.is_own(addr):
            if await self._agents.get(agent_id) is None:
                raise UnknownAgentError(f"this node does not host agent {agent_id!r}")
        else:
            await self.pool.check_agent(addr, agent_id)

        async def send(message: Message) -> SendReceipt:
            return await self._route(message, send_options(), addr)

        return Connection(self.pool, addr, agent_id, sender=send)

    # ------------------------------------------------------------------ failed sends

    async def get_failed_messages(self, sender_id: str, limit: int = 100) -> list[Message]:
        """``sender_id``'s messages that could not be delivered, oldest first; each one's
        metadata says why (``aos.dead_letter.reason``/``.error``)."""
        await self._ensure_client()
        return await self._outbox.failed(sender_id, limit)

    async def resubmit_failed(self, sender_id: str | None = None) -> ResubmitReport:
        """Send ``sender_id``'s failed messages (everyone's when None) again, now. Those that
        fail again go back to the dead-letter queue."""
        await self._ensure_client()
        return await self._outbox.resubmit(sender_id)

    def wake_outbox(self) -> None:
        """Ask the outbox pump to look for resubmitted messages now."""
        self._outbox.wake()

    # ------------------------------------------------------------------ server

    def _add_routes(self) -> None:
        r = self.app.router
        r.add_get(f"{API_PREFIX}/health", self._on_health)
        r.add_get(f"{API_PREFIX}/agents", self._signed(self._agent_index, "agent index"))
        r.add_get(
            f"{API_PREFIX}/agents/{{agent_id}}", self._signed(self._agent_entry, "agent look-up")
        )
        r.add_post(f"{API_PREFIX}/messages", self._on_message)
        # Foreign producers: the CloudEvents HTTP binding (see .cloudevents).
        CloudEventsEndpoint(self.config, self._intake, self._agents.get).add_routes(r)
        if self.config.a2a.enabled:
            self._a2a.add_routes(r)

    async def _authenticated(self, request: web.Request) -> tuple[bytes, web.Response | None]:
        """The body of a node-to-node request, or the answer refusing it (401, 413)."""
        why = self._auth.refuse_headers(request.headers)
        if why is not None:
            return b"", error_response(401, "unauthorized", why)
        try:
            body = await read_body(request, self.config.server.max_body_bytes)
        except BodyTooLarge as exc:
            return b"", error_response(413, "payload_too_large", str(exc))
        why = self._auth.refuse_body(request.method, request.raw_path, request.headers, body)
        if why is not None:
            return body, error_response(401, "unauthorized", why)
        return body, None

    async def _on_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok", "node_id": self.node_id})

    def _signed(self, answer: _Answer, what: str) -> _Answer:
        """A handler that answers a node-to-node request with ``answer`` once its signature
        is checked (401, 413 when refused); a failure is logged and answered 500."""

        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                _, denied = await self._authenticated(request)
                if denied is not None:
                    return denied
                return await answer(request)
            except ConnectionError:  # the client went away: the server's guard logs it quietly
                raise
            except Exception as exc:
                log.exception("%s failed", what)
                return error_response(500, "internal_error", error_text(exc))

        return handler

    async def _agent_index(self, request: web.Request) -> web.StreamResponse:
        """``GET /aos/v1/agents``: the agents this node hosts, with their card paths."""
        agents = [
            {
                "agent_id": a.agent_id,
                "capabilities": list(a.capabilities),
                "card_path": f"/agents/{quote(a.agent_id, safe='')}{CARD_PATH}",
            }
            for a in await self.hosted_agents()
        ]
        return web.json_response({"node_id": self.node_id, "url": self.url, "agents": agents})

    async def _agent_entry(self, request: web.Request) -> web.StreamResponse:
        """``GET /aos/v1/agents/{agent_id}``: one hosted agent, 404 when not hosted here."""
        agent_id = request.match_info["agent_id"]
        info = await self._agents.get(agent_id)
        if info is None:
            return error_response(
                404, "unknown_agent", f"this node does not host agent {agent_id!r}"
            )
        return web.json_response(
            {
                "agent_id": info.agent_id,
                "capabilities": list(info.capabilities),
                "node_id": self.node_id,
            }
        )

    async def _on_message(self, request: web.Request) -> web.StreamResponse:
        try:
            body, denied = await self._authenticated(request)
            if denied is not None:
                return denied
            if self._auth.secrets:  # a signed request is accepted once (see .replay)
                replayed = await self._replays.check(request.headers)
                if replayed is not None:
                    status, code, text, headers = replayed
                    return error_response(status, code, text, **headers)
            if request.content_type == CLOUDEVENTS_BATCH:
                return await self._accept_batch(body)
            status, code, text, duplicate = await self._admit(body)
            if status == 202:
                return accepted_response(duplicate)
            return error_response(status, code, text)
        except ConnectionError:  # the client went away: the server's guard logs it quietly
            raise
        except Exception as exc:  # never let a request take the node down
            log.exception("handling an incoming message failed")
            return error_response(500, "internal_error", error_text(exc))

    async def _accept_batch(self, body: bytes) -> web.StreamResponse:
        """A CloudEvents JSON batch: each message admitted on its own, one result each
        (``200 {"results": [{"id", "status", "duplicate" | "error"}, ...]}`` in order)."""
        try:
            events = decode_batch(body, max_bytes=self.config.server.max_body_bytes)
        except DecodeError as exc:
            return error_response(400, "bad_request", f"not a CloudEvents batch: {exc}")
        if len(events) > MAX_BATCH_MESSAGES:
            return error_response(
                413, "payload_too_large", f"{len(events)} messages; at most {MAX_BATCH_MESSAGES}"
            )
        results = [batch_result(event, await self._admit(event)) for event in events]
        return web.Response(
            status=200, body=dumps({"results": results}), content_type="application/json"
        )

    async def _admit(self, envelope: bytes | Any) -> Outcome:
        """Decode one envelope (bytes, or an event parsed from a batch) and publish it on the
        bus: ``(status, error code, error text, duplicate)``, status 202 when accepted."""
        try:
            message, options = self._intake.decode(envelope)
        except Refusal as refused:
            return refused.outcome
        recipient = message.recipient_id
        if recipient is None:
            return 400, "bad_request", "the message names no recipient (aosrecipient)", False
        queue = self._relay.answer_queue(message, options)  # an answer for a reply queue
        if queue is None and await self._agents.get(recipient) is None:
            return 404, "unknown_agent", f"this node does not host agent {recipient!r}", False
        await self._relay.route_answers(message, options)
        return await self._intake.publish(message, options, queue=queue)
