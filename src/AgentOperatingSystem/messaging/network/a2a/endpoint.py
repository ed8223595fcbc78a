"""The A2A side of a node: the agent-card routes (each agent's, and the origin's own for the
primary agent), the JSON-RPC endpoint of each agent, and the JSON-RPC 2.0 envelope: single
requests, batches, notifications (executed, never answered), ids answered exactly as sent,
the ``A2A-Version`` header (``0.3`` and ``1.0``; VersionNotSupportedError for others).

An A2A message becomes a QUERY to the agent on the bus (sender ``a2a:<contextId>``, content
``{"text", "parts", "data", "a2a"}``); the handler's return value becomes the task's artifact
and the agent's reply message, or, when it is an
:class:`~AgentOperatingSystem.messaging.core.turns.InputRequired`, the question of a task
that waits for the client's next message.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
from typing import Any, Awaitable, Callable

from aiohttp import web

from ....config.network import NetworkConfig
from ....storage.manager import StorageManager
from ...core.bus import MessageBus
from ...errors import error_text
from ..registry import AgentInfo
from ..wire import CARD_PATH, BodyTooLarge, dumps, error_response, log, read_body
from .card import agent_card
from .conversations import ConversationLog
from .desk import Caller, TaskDesk
from .gateway import Gateway
from .push import PushSender, push_method, push_task_id
from .rest import RestBinding
from .rpc import (
    Call,
    RpcError,
    error_of,
    invalid_request,
    parse_call,
    rpc_error,
    rpc_result,
    unsupported,
)
from .sse import stream_error, stream_task
from .store import TaskStore

__all__ = ["A2AEndpoint", "Hosted", "Listing"]

Hosted = Callable[[str], Awaitable[AgentInfo | None]]
"""``hosted(agent_id)``: the agent's entry when this node hosts it, else None."""
Listing = Callable[[], Awaitable[list[AgentInfo]]]
"""``listing()``: every agent this node hosts."""

#: The A2A protocol versions served (``A2A-Version`` header; absent means 0.3).
VERSIONS = ("0.3", "1.0")
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")
#: The most requests one JSON-RPC batch may hold.
MAX_BATCH = 100


class A2AEndpoint:
    """Agent cards, JSON-RPC and the tasks of the agents ``hosted`` on a node whose local
    bus is ``bus``; tasks are kept in ``storage`` (in memory when None). ``listing`` gives
    the hosted agents, for the card at the node's own well-known URI (the configured
    ``primary_agent``, else the one registered first); ``conversations`` (a
    ConversationSystem) records each task's turns in the conversation of its context."""

    def __init__(
        self,
        config: NetworkConfig,
        bus: MessageBus,
        hosted: Hosted,
        storage: StorageManager | None = None,
        listing: Listing | None = None,
        conversations: ConversationLog | None = None,
    ) -> None:
        self.config = config
        self.bus = bus
        self.hosted = hosted
        self.listing = listing
        self._own_storage = storage is None
        self.storage = storage or StorageManager("memory://")
        self.store = TaskStore(self.storage, config.a2a.max_tasks)
        self.gateway = Gateway(bus, self._answer)
        self.push = PushSender(config, bus)
        self.desk = TaskDesk(config, self.store, self.gateway, self.push, conversations)
        self.rest = RestBinding(self)

    async def _answer(self, task_id: str, msg: Any) -> None:
        await self.desk.answer(task_id, msg)

    async def start(self) -> None:
        """Consume the agents' answers (tasks left by an earlier run are continued) and the
        queue of push notifications."""
        await self.gateway.start()
        await self.push.start()

    async def close(self) -> None:
        """End open streams and stop consuming answers; tasks stay in the store."""
        self.desk.close()
        await self.gateway.stop()
        await self.push.stop()
        if self._own_storage:
            await self.storage.close()

    # -- cards -----------------------------------------------------------------------------

    def _base(self, request: web.Request) -> str:
        return self.config.server.public_url or f"{request.scheme}://{request.host}"

    def _card(self, info: AgentInfo, request: web.Request, extended: bool) -> dict[str, Any]:
        bearer = self.config.a2a.auth_token is not None
        return agent_card(
            info, self._base(request), bearer=bearer, extended=extended, push=self.push.enabled
        )

    async def on_card(self, request: web.Request) -> web.StreamResponse:
        """``GET /agents/{agent_id}/.well-known/agent-card.json`` (public)."""
        try:
            agent_id = request.match_info["agent_id"]
            info = await self.hosted(agent_id)
            if info is None:
                return _unknown(agent_id)
            return web.json_response(self._card(info, request, False))
        except ConnectionError:  # the client left: the server logs it quietly
            raise
        except Exception as exc:
            log.exception("agent card failed")
            return error_response(500, "internal_error", error_text(exc))

    async def on_origin_card(self, request: web.Request) -> web.StreamResponse:
        """``GET /.well-known/agent-card.json``: the primary agent's card (public)."""
        try:
            info = await self.primary()
            if info is None:
                return error_response(404, "no_agent", "this node hosts no agent yet")
            return web.json_response(self._card(info, request, False))
        except ConnectionError:  # the client left: the server logs it quietly
            raise
        except Exception as exc:
            log.exception("origin agent card failed")
            return error_response(500, "internal_error", error_text(exc))

    async def primary(self) -> AgentInfo | None:
        """The agent of the node's own card: ``a2a_primary_agent`` when set (and hosted),
        else the hosted agent registered first."""
        name = self.config.a2a.primary_agent
        if name is not None:
            return await self.hosted(name)
        agents = [] if self.listing is None else await self.listing()
        return min(agents, key=lambda a: (a.registered_at, a.agent_id), default=None)

    # -- JSON-RPC ----------------------------------------------------------------------------

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """The A2A routes: the cards, JSON-RPC (``POST /agents/{agent_id}``, with or without
        a trailing slash) and HTTP+JSON (under each agent, and at the origin for the
        primary agent)."""
        router.add_get(CARD_PATH, self.on_origin_card)
        router.add_get(f"/agents/{{agent_id}}{CARD_PATH}", self.on_card)
        router.add_post("/agents/{agent_id}", self.on_rpc)
        router.add_post("/agents/{agent_id}/", self.on_rpc)
        self.rest.add_routes(router, "/agents/{agent_id}")
        self.rest.add_routes(router, "")

    def version_error(self, request: web.Request) -> RpcError | None:
        """VersionNotSupportedError when the request's ``A2A-Version`` is not served."""
        return _version_error(request)

    def owner(self, request: web.Request) -> str | None:
        """Who calls: a digest of the credentials ("" when public); None when refused."""
        token = self.config.a2a.auth_token
        given = request.headers.get("Authorization", "")
        if token is not None:
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
                return None
            return hashlib.sha256(given.encode("utf-8", "replace")).hexdigest()[:32]
        return ""

    async def on_rpc(self, request: web.Request) -> web.StreamResponse:
        """``POST /agents/{agent_id}`` (with or without a trailing slash): JSON-RPC (bearer
        token when set)."""
        try:
            owner = self.owner(request)
            if owner is None:
                return error_response(
                    401,
                    "unauthorized",
                    "a bearer token is required",
                    **{"WWW-Authenticate": "Bearer"},
                )
            agent_id = request.match_info["agent_id"]
            if await self.hosted(agent_id) is None:
                return _unknown(agent_id)
            try:
                body = await read_body(request, self.config.server.max_body_bytes)
            except BodyTooLarge as exc:
                return error_response(413, "payload_too_large", str(exc))
            if not self.bus.started:
                return error_response(503, "unavailable", "the node's message bus is not running")
            return await self.handle(request, (agent_id, owner), body)
        except ConnectionError:  # the client left: the server logs it quietly
            raise
        except Exception as exc:
            log.exception("A2A request failed")
            return web.json_response(
                rpc_error(None, -32603, f"Internal error: {error_text(exc)}"), status=500
            )

    async def handle(self, request: web.Request, caller: Caller, body: bytes) -> web.StreamResponse:
        """Answer the JSON-RPC ``body`` (one request or a batch) of ``caller``."""
        try:
            rpc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return _json(rpc_error(None, -32700, "Parse error: invalid JSON"))
        version = _version_error(request)
        if isinstance(rpc, list):
            return await self._batch(request, caller, rpc, version)
        try:
            call = parse_call(rpc)
            if version is not None:
                raise version
        except RpcError as exc:
            if _unanswered(rpc, exc):
                return web.Response(status=204)
            return _json(error_of(_id_of(rpc), exc))
        if call.kind in ("stream", "subscribe") and not call.notification:
            try:
                return await self._stream(request, caller, call)
            except RpcError as exc:
                if "text/event-stream" in request.headers.get("Accept", ""):
                    return await stream_error(request, error_of(call.id, exc))
                return _json(error_of(call.id, exc))
        answer = await self._answer_call(request, caller, call)
        if answer is None:
            return web.Response(status=204)
        return _json(answer)

    async def _batch(
        self, request: web.Request, caller: Caller, rpcs: list[Any], version: RpcError | None
    ) -> web.StreamResponse:
        """A batch: each request answered on its own, in order; notifications not at all."""
        if not rpcs:
            return _json(error_of(None, invalid_request("an empty batch")))
        if len(rpcs) > MAX_BATCH:
            return _json(error_of(None, invalid_request(f"a batch of more than {MAX_BATCH}")))
        answers = []
        for rpc in rpcs:
            try:
                call = parse_call(rpc)
                if version is not None:
                    raise version
            except RpcError as exc:
                if not _unanswered(rpc, exc):
                    answers.append(error_of(_id_of(rpc), exc))
                continue
            if call.kind in ("stream", "subscribe"):
                if not call.notification:
                    answers.append(error_of(call.id, invalid_request("streams cannot be batched")))
                continue
            answer = await self._answer_call(request, caller, call)
            if answer is not None:
                answers.append(answer)
        if not answers:
            return web.Response(status=204)
        return web.Response(body=dumps(answers), content_type="application/json")

    async def _answer_call(
        self, request: web.Request, caller: Caller, call: Call
    ) -> dict[str, Any] | None:
        """Run one (non-stream) call: its answer, None for a notification."""
        try:
            result = await self._run(request, caller, call)
        except RpcError as exc:
            return None if call.notification else error_of(call.id, exc)
        return None if call.notification else rpc_result(call.id, result)

    async def _run(self, request: web.Request, caller: Caller, call: Call) -> Any:
        desk, params, legacy = self.desk, call.params, call.legacy
        kind = call.kind
        if kind == "send":
            return await self.send(caller, params, legacy)
        if kind == "get":
            return await desk.get(caller, params, legacy)
        if kind == "cancel":
            return await desk.cancel(caller, params, legacy)
        if kind == "list":
            return await desk.list(caller, params, legacy)
        if kind == "push":
            self.push.check()
            task = await desk.task(caller, push_task_id(params))
            result, changed = push_method(call.method, task, params, legacy)
            if changed:
                await self.store.save(task)
            return result
        if kind == "extended_card":
            return await self.extended_card(request, caller)
        if kind in ("stream", "subscribe"):  # a notification: run, answer nothing
            if kind == "stream":
                turn, _, _ = await desk.turn(caller, params)
                await desk.start(turn)
            return None
        raise unsupported(call.method)  # pragma: no cover - every kind is handled above

    async def send(self, caller: Caller, params: dict[str, Any], legacy: bool) -> dict[str, Any]:
        """``SendMessage``: the task, once it is finished or waits for input (or at once)."""
        desk = self.desk
        turn, immediate, length = await desk.turn(caller, params)
        await desk.start(turn)
        task = turn[0] if immediate else await desk.wait(turn[0])
        rendered = task.render(legacy, length)
        return rendered if legacy else {"task": rendered}

    async def extended_card(self, request: web.Request, caller: Caller) -> dict[str, Any]:
        """``GetExtendedAgentCard``: declared (and served) when the endpoint needs a token."""
        if self.config.a2a.auth_token is None:
            raise unsupported("the extended agent card (capabilities.extendedAgentCard is false)")
        info = await self.hosted(caller[0])
        if info is None:  # pragma: no cover - checked before the call
            raise unsupported("the extended agent card of an agent this node no longer hosts")
        return self._card(info, request, True)

    async def _stream(self, request: web.Request, caller: Caller, call: Call) -> web.StreamResponse:
        """``SendStreamingMessage`` (a new turn) or ``SubscribeToTask`` (a running task)."""
        if call.kind == "stream":
            turn, _, length = await self.desk.turn(caller, call.params)
            start = functools.partial(self.desk.start, turn)
            return await stream_task(request, call.id, turn[0], call.legacy, start, length)
        task = await self.desk.task(caller, call.params.get("id"))
        if task.terminal:
            raise unsupported(f"subscribing to task {task.id}, which is {task.state}")
        return await stream_task(request, call.id, task, call.legacy, None)


def _id_of(rpc: Any) -> Any:
    """The id to answer a refused request with: as sent when valid, else null."""
    if isinstance(rpc, dict):
        value = rpc.get("id")
        if value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool)):
            return value
    return None


def _unanswered(rpc: Any, exc: RpcError) -> bool:
    """True for a notification (a valid request object without ``id``) refused after it
    was read: it gets no answer, even an error (JSON-RPC 2.0 section 4.1)."""
    return exc.code != -32600 and isinstance(rpc, dict) and "id" not in rpc


def _version_error(request: web.Request) -> RpcError | None:
    """VersionNotSupportedError (-32009) when the ``A2A-Version`` asked for is not served."""
    asked = request.headers.get("A2A-Version", "").strip()
    if not asked:
        return None
    m = _VERSION.match(asked)
    if m is not None and f"{int(m[1])}.{int(m[2])}" in VERSIONS:
        return None
    return RpcError(
        -32009,
        f"Version not supported: A2A {asked[:20]}; this agent speaks {', '.join(VERSIONS)}",
        "VERSION_NOT_SUPPORTED",
        {"requestedVersion": asked[:20], "supportedVersions": ",".join(VERSIONS)},
    )


def _json(payload: Any) -> web.Response:
    return web.Response(body=dumps(payload), content_type="application/json")


def _unknown(agent_id: str) -> web.Response:
    return error_response(404, "unknown_agent", f"this node does not host agent {agent_id!r}")
