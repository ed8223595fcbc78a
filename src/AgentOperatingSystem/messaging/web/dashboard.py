"""The node's admin JSON API and its web dashboard, on any aiohttp application.

:func:`install_dashboard` adds, to an ``aiohttp.web.Application`` (a
:class:`~AgentOperatingSystem.messaging.network.node.NetworkProtocol` node's ``app``, or
your own):

``GET /dashboard/``
    A page (plain HTML/JS/CSS served from this package, no CDN) with the agents and their
    queue depths, the dead-letter queue (reason, last error, a *Resubmit* button), a live
    message stream and a conversation viewer.
``/admin/...``
    The JSON API the page and the ``aos-messaging`` command line use:

    ===========================================  ==========================================
    ``GET  /admin/info``                          node, engine, bus id
    ``GET  /admin/queues[?all=1]``                agents: depth, dead letters, subscribed
    ``GET  /admin/stats``                         counters per agent (when metrics are on)
    ``GET  /admin/dlq[?agent=A&limit=N]``         dead letters with reason and last error
    ``GET  /admin/dlq/{agent}/{message_id}``      one dead letter in full
    ``POST /admin/dlq/{agent}/{message_id}/resubmit``  put it back into its queue
    ``POST /admin/dlq/{agent}/purge``             delete the agent's dead letters
    ``POST /admin/send``                          publish a message (JSON fields of Message)
    ``POST /admin/request``                       request/response, waits for the answer
    ``GET  /admin/tail[?agent=A&type=T]``         live events (Server-Sent Events)
    ``GET  /admin/conversations[?state=&participant=]``  conversations
    ``GET  /admin/conversations/{id}[?limit=N]``  one conversation with its turns
    ===========================================  ==========================================

Errors are JSON ``{"error": {"type": ..., "message": ...}}`` with a 4xx/5xx status.

**Access.** With ``token`` (default: ``$AOS_ADMIN_TOKEN``) every route here requires it, as
``Authorization: Bearer <token>``, the cookie ``aos_admin_token`` (set when the page is
opened as ``/dashboard/?token=...``) or the query parameter ``token``. POST routes accept only
``Content-Type: application/json`` and refuse a foreign ``Origin``, so a web page on another
site cannot drive them from a visitor's browser. Without a token, bind the node to
127.0.0.1 (the default) or put it behind an authenticating proxy.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections import deque
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import (
    ConversationNotFoundError,
    InvalidMessageError,
    MessagingError,
    PermissionDeniedError,
    QueueFullError,
    RequestFailedError,
    RequestTimeoutError,
    RoutingError,
    UnknownMessageError,
)
from ..metadata import DLQ_AT, DLQ_ATTEMPTS, DLQ_ERROR, DLQ_QUEUE, DLQ_REASON
from ..observability.telemetry import BusTelemetry, _MetricsOn
from ..types import MESSAGE_FIELDS, Message, MessagePriority, MessageType

__all__ = [
    "ADMIN_TOKEN_ENV",
    "EventHub",
    "install_dashboard",
    "message_to_dict",
]

log = logging.getLogger("aos.messaging.dashboard")

ADMIN_TOKEN_ENV = "AOS_ADMIN_TOKEN"
"""The environment variable holding the admin token when none is passed."""
_COOKIE = "aos_admin_token"
_STATIC = {
    "dashboard.html": "text/html",
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
}
_HEARTBEAT = 15.0
_CLIENT_QUEUE = 1000
_MAX_LIMIT = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------------------- JSON helpers


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def message_to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data (enums by name/value, times in ISO 8601)."""
    return {
        "message_id": message.message_id,
        "message_type": message.message_type.value,
        "sender_id": message.sender_id,
        "recipient_id": message.recipient_id,
        "content": _jsonable(message.content),
        "timestamp": message.timestamp.isoformat(),
        "priority": message.priority.name,
        "metadata": _jsonable(message.metadata),
        "correlation_id": message.correlation_id,
        "reply_to": message.reply_to,
        "ttl": message.ttl,
    }


def _iso(epoch: Any) -> str | None:
    if isinstance(epoch, (int, float)) and not isinstance(epoch, bool):
        return datetime.fromtimestamp(float(epoch), tz=UTC).isoformat()
    return None


def _dead_letter(message: Message, agent: str) -> dict[str, Any]:
    meta = message.metadata
    body = message_to_dict(message)
    body.update(
        {
            "agent": meta.get(DLQ_QUEUE) or agent,
            "reason": meta.get(DLQ_REASON),
            "error": meta.get(DLQ_ERROR),
            "attempts": meta.get(DLQ_ATTEMPTS),
            "dead_lettered_at": _iso(meta.get(DLQ_AT)),
        }
    )
    return body


class _HTTPError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (UnknownMessageError, 404),
    (ConversationNotFoundError, 404),
    (PermissionDeniedError, 403),
    (RequestTimeoutError, 504),
    (RequestFailedError, 502),
    (QueueFullError, 503),
    (RoutingError, 422),
    (InvalidMessageError, 400),
)


def _status_of(exc: MessagingError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _int_param(request: web.Request, name: str, default: int, low: int = 1) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _HTTPError(400, "InvalidParameter", f"{name} must be an integer") from None
    if value < low or value > _MAX_LIMIT:
        raise _HTTPError(400, "InvalidParameter", f"{name} must be in {low}..{_MAX_LIMIT}")
    return value


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _HTTPError(400, "InvalidJSON", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _HTTPError(400, "InvalidJSON", "the request body must be a JSON object")
    return body


# ---------------------------------------------------------------------------- live events


class EventHub:
    """Fans the bus's telemetry events out to connected stream clients.

    It listens to the bus's :class:`~.observability.BusTelemetry` only while at least one
    client is connected, so a node nobody watches pays nothing for it. Each client has a
    bounded queue; a client too slow to keep up loses the oldest events (and is told how
    many).
    """

    def __init__(self, telemetry: BusTelemetry | None) -> None:
        self.telemetry = telemetry
        self._clients: set[_Client] = set()
        self._seq = 0
        self.closed = False

    def _on_event(self, event: dict[str, Any]) -> None:
        self._seq += 1
        event["seq"] = self._seq
        for client in list(self._clients):
            client.offer(event)

    def connect(self, agent: str | None, message_type: str | None) -> _Client:
        """Register a client (starts listening when it is the first)."""
        client = _Client(agent, message_type)
        if not self._clients and self.telemetry is not None:
            self.telemetry.add_listener(self._on_event)
        self._clients.add(client)
        return client

    def disconnect(self, client: _Client) -> None:
        """Remove a client (stops listening after the last)."""
        self._clients.discard(client)
        if not self._clients and self.telemetry is not None:
            self.telemetry.remove_listener(self._on_event)

    @property
    def clients(self) -> int:
        """How many clients are connected."""
        return len(self._clients)

    def close(self) -> None:
        """Wake every client so its stream ends (node shutdown)."""
        self.closed = True
        for client in list(self._clients):
            client.offer(None)


class _Client:
    def __init__(self, agent: str | None, message_type: str | None) -> None:
        self.agent = agent
        self.message_type = message_type
        self.queue: deque[dict[str, Any] | None] = deque()
        self.dropped = 0
        self.wakeup = asyncio.Event()

    def _wanted(self, event: dict[str, Any]) -> bool:
        if self.message_type is not None and event.get("message_type") != self.message_type:
            return False
        if self.agent is not None:
            agent = self.agent
            if agent not in (event.get("agent"), event.get("recipient"), event.get("sender")):
                return agent in (event.get("queues") or ())
        return True

    def offer(self, event: dict[str, Any] | None) -> None:
        if event is not None and not self._wanted(event):
            return
        if len(self.queue) >= _CLIENT_QUEUE:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(event)
        self.wakeup.set()


# ---------------------------------------------------------------------------- install


def install_dashboard(
    app: web.Application,
    bus: Any,
    storage: Any = None,
    *,
    token: str | None = None,
    node_info: dict[str, Any] | None = None,
) -> EventHub:
    """Add the dashboard page and the ``/admin`` JSON API for ``bus`` to ``app``.

    ``storage`` is a :class:`~AgentOperatingSystem.storage.manager.StorageManager` (or a
    ready :class:`~.conversation_system.ConversationSystem`) whose conversations the page
    shows (default: ``bus.storage`` when it is one). ``token`` protects every route (default
    ``$AOS_ADMIN_TOKEN``; none: open). ``node_info`` is merged into ``/admin/info``.
    The live stream needs the bus's telemetry: a bus without one gets a
    :class:`~.observability.BusTelemetry` (metrics on, tracing as configured).
    Returns the :class:`EventHub` behind ``/admin/tail``.
    """
    secret = token if token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None
    telemetry = getattr(bus, "telemetry", None)
    if telemetry is None:
        telemetry = BusTelemetry(
            _MetricsOn(getattr(bus, "config", None)), clock=getattr(bus, "clock", None)
        )
        bus.telemetry = telemetry
    hub = EventHub(telemetry if isinstance(telemetry, BusTelemetry) else None)
    api = _AdminAPI(bus, storage, hub, node_info or {})

    def guard(handler: Handler, *, page: bool = False) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if secret is not None and not _authorized(request, secret):
                if page:
                    return web.Response(
                        status=401,
                        text="401: open this page as /dashboard/?token=<admin token>\n",
                    )
                return _error(401, "Unauthorized", "missing or wrong admin token")
            if request.method == "POST":
                if request.content_type != "application/json":
                    return _error(
                        415, "UnsupportedMediaType", "POST bodies must be application/json"
                    )
                origin = request.headers.get("Origin")
                if origin and origin != "null" and urlsplit(origin).netloc != request.host:
                    return _error(403, "Forbidden", f"cross-origin request from {origin}")
            try:
                response = await handler(request)
            except _HTTPError as exc:
                return _error(exc.status, exc.kind, exc.message)
            except MessagingError as exc:
                return _error(_status_of(exc), type(exc).__name__, str(exc))
            if page and secret is not None and request.query.get("token"):
                response.set_cookie(_COOKIE, secret, httponly=True, samesite="Strict")
            return response

        return wrapped

    r = app.router
    r.add_get("/dashboard", guard(api.redirect_page, page=True))
    r.add_get("/dashboard/", guard(api.page, page=True))
    r.add_get("/dashboard/static/{name}", guard(api.static, page=True))
    r.add_get("/admin/info", guard(api.info))
    r.add_get("/admin/queues", guard(api.queues))
    r.add_get("/admin/stats", guard(api.stats))
    r.add_get("/admin/dlq", guard(api.dlq_list))
    r.add_get("/admin/dlq/{agent}/{message_id}", guard(api.dlq_show))
    r.add_post("/admin/dlq/{agent}/{message_id}/resubmit", guard(api.dlq_resubmit))
    r.add_post("/admin/dlq/{agent}/purge", guard(api.dlq_purge))
    r.add_post("/admin/send", guard(api.send))
    r.add_post("/admin/request", guard(api.request))
    r.add_get("/admin/tail", guard(api.tail))
    r.add_get("/admin/conversations", guard(api.conversations))
    r.add_get("/admin/conversations/{conversation_id}", guard(api.conversation))

    async def on_shutdown(_app: web.Application) -> None:
        hub.close()

    app.on_shutdown.append(on_shutdown)
    return hub


def _authorized(request: web.Request, secret: str) -> bool:
    given: list[str] = []
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given.append(header[len("Bearer ") :].strip())
    cookie = request.cookies.get(_COOKIE)
    if cookie:
        given.append(cookie)
    query = request.query.get("token")
    if query:
        given.append(query)
    want = secret.encode()
    return any(hmac.compare_digest(g.encode(), want) for g in given)


class _AdminAPI:
    """The route handlers (one instance per installed bus)."""

    def __init__(self, bus: Any, storage: Any, hub: EventHub, info: dict[str, Any]) -> None:
        self.bus = bus
        self.hub = hub
        self.info_extra = info
        self._storage = storage
        self._conversations: Any = None

    # -- page ---------------------------------------------------------------------------

    async def redirect_page(self, request: web.Request) -> web.StreamResponse:
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPFound(f"/dashboard/{query}")

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._file("dashboard.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise _HTTPError(404, "NotFound", f"no static file {name!r}")
        return self._file(name)

    @staticmethod
    def _file(name: str) -> web.Response:
        data = resources.files(__package__).joinpath("static", name).read_bytes()
        return web.Response(
            body=data,
            content_type=_STATIC[name],
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": (
                    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:"
                ),
            },
        )

    # -- info and queues ------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.StreamResponse:
        bus = self.bus
        config = getattr(bus, "config", None)
        broker_url = None
        if config is not None and hasattr(config, "resolved_broker_url"):
            broker_url = _redact(str(config.resolved_broker_url()))
        tel = self.hub.telemetry
        body: dict[str, Any] = {
            "bus_id": getattr(bus, "instance_id", None),
            "broker_url": broker_url,
            "started": bool(getattr(bus, "started", False)),
            "metrics": bool(tel is not None and tel.metrics_enabled),
            "tracing": bool(tel is not None and tel.tracing_enabled),
            "stream_clients": self.hub.clients,
            "conversations": self._conversation_system() is not None,
        }
        body.update(_jsonable(self.info_extra))
        return web.json_response(body)

    def _subscribed(self) -> set[str]:
        return set(self.bus.subscriptions)

    async def queues(self, request: web.Request) -> web.StreamResponse:
        bus = self.bus
        show_all = request.query.get("all", "") in ("1", "true", "yes")
        names = set(await bus.queues()) | self._subscribed()
        tel = self.hub.telemetry
        if tel is not None:
            names |= tel.known_queues()
        subscribed = self._subscribed()
        rows = []
        for name in sorted(names):
            if name.startswith("_") and not show_all:
                continue
            rows.append(
                {
                    "agent": name,
                    "depth": await bus.queue_depth(name),
                    "dead_letters": await bus.dead_letter_depth(name),
                    "subscribed": name in subscribed,
                }
            )
        return web.json_response({"queues": rows})

    async def stats(self, request: web.Request) -> web.StreamResponse:
        tel = self.hub.telemetry
        if tel is None or not tel.metrics_enabled:
            return web.json_response({"metrics": False, "agents": []})
        return web.json_response(
            {"metrics": True, "agents": [{"agent": a, **c} for a, c in tel.counts().items()]}
        )

    # -- dead letters -------------------------------------------------------------------

    async def dlq_list(self, request: web.Request) -> web.StreamResponse:
        bus = self.bus
        limit = _int_param(request, "limit", 100)
        agent = request.query.get("agent") or None
        if agent is not None:
            agents = [agent]
        else:
            agents = [q for q in sorted(await bus.queues()) if await bus.dead_letter_depth(q) > 0]
        out: list[dict[str, Any]] = []
        for name in agents:
            for msg in await bus.get_dead_letter_messages(name, limit):
                entry = _dead_letter(msg, name)
                entry["content"] = _preview(entry["content"])
                out.append(entry)
                if len(out) >= limit:
                    break
            if len(out) >= limit:
                break
        return web.json_response({"dead_letters": out})

    async def _find_dead(self, agent: str, message_id: str) -> Message:
        for msg in await self.bus.get_dead_letter_messages(agent, _MAX_LIMIT):
            if isinstance(msg, Message) and msg.message_id == message_id:
                return msg
        raise _HTTPError(404, "UnknownMessageError", f"no dead letter {message_id!r} in {agent!r}")

    async def dlq_show(self, request: web.Request) -> web.StreamResponse:
        agent = request.match_info["agent"]
        msg = await self._find_dead(agent, request.match_info["message_id"])
        return web.json_response(_dead_letter(msg, agent))

    async def dlq_resubmit(self, request: web.Request) -> web.StreamResponse:
        agent = request.match_info["agent"]
        message_id = request.match_info["message_id"]
        await self.bus.resubmit(message_id, agent)
        tel = self.hub.telemetry
        if tel is not None and self.hub.clients:
            tel.emit({"event": "resubmitted", "agent": agent, "message_id": message_id})
        return web.json_response({"resubmitted": message_id, "agent": agent})

    async def dlq_purge(self, request: web.Request) -> web.StreamResponse:
        agent = request.match_info["agent"]
        purged = await self.bus.purge_dead_letters(agent)
        return web.json_response({"purged": purged, "agent": agent})

    # -- send / request -----------------------------------------------------------------

    async def send(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        fields = _message_fields(body, require_type=True)
        options = {
            k: body[k]
            for k in ("delivery_mode", "idempotency_key", "delay")
            if body.get(k) is not None
        }
        result = await self.bus.publish(**fields, **options)
        return web.json_response(
            {
                "message_id": result.message_id,
                "recipients": list(result.recipients),
                "duplicate": result.duplicate,
            }
        )

    async def request(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        recipient = body.get("recipient_id")
        if not isinstance(recipient, str) or not recipient:
            raise _HTTPError(400, "InvalidMessageError", "recipient_id is required")
        timeout = body.get("timeout", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise _HTTPError(400, "InvalidMessageError", "timeout must be a positive number")
        content = body.get("content") or {}
        if not isinstance(content, dict):
            content = {"text": content}
        response = await self.bus.request(
            sender_id=body.get("sender_id") or "aos-cli",
            recipient_id=recipient,
            content=content,
            timeout=float(timeout),
            message_type=body.get("message_type") or MessageType.QUERY,
            priority=body.get("priority") or MessagePriority.NORMAL,
        )
        return web.json_response({"response": message_to_dict(response)})

    # -- live stream --------------------------------------------------------------------

    async def tail(self, request: web.Request) -> web.StreamResponse:
        hub = self.hub
        if hub.telemetry is None:
            raise _HTTPError(
                501, "NotAvailable", "the bus's telemetry is not a BusTelemetry: no live stream"
            )
        agent = request.query.get("agent") or None
        message_type = request.query.get("type") or None
        client = hub.connect(agent, message_type)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n: connected\n\n")
            while not hub.closed:
                if not client.queue:
                    client.wakeup.clear()
                    try:
                        await asyncio.wait_for(client.wakeup.wait(), _HEARTBEAT)
                    except TimeoutError:
                        await response.write(b": ping\n\n")
                        continue
                chunks: list[bytes] = []
                if client.dropped:
                    note = {"event": "dropped", "count": client.dropped}
                    client.dropped = 0
                    chunks.append(f"event: dropped\ndata: {json.dumps(note)}\n\n".encode())
                ended = False
                while client.queue:
                    event = client.queue.popleft()
                    if event is None:
                        ended = True
                        break
                    data = json.dumps(event, default=str)
                    chunks.append(f"id: {event.get('seq', '')}\ndata: {data}\n\n".encode())
                if chunks:
                    await response.write(b"".join(chunks))
                if ended:
                    break
        except ConnectionResetError:
            pass  # the client went away
        finally:
            hub.disconnect(client)
        return response

    # -- conversations ------------------------------------------------------------------

    def _conversation_system(self) -> Any:
        if self._conversations is not None:
            return self._conversations
        storage = self._storage if self._storage is not None else getattr(self.bus, "storage", None)
        if storage is None:
            return None
        if hasattr(storage, "list_conversations"):
            self._conversations = storage
            return storage
        try:
            from ...storage.manager import StorageManager
            from ..conversation_system import ConversationSystem
        except ImportError:  # pragma: no cover - both ship with the package
            return None
        if isinstance(storage, StorageManager):
            self._conversations = ConversationSystem(storage)
        return self._conversations

    async def conversations(self, request: web.Request) -> web.StreamResponse:
        system = self._conversation_system()
        if system is None:
            return web.json_response({"available": False, "conversations": []})
        state = request.query.get("state") or None
        participant = request.query.get("participant") or None
        rows = await system.list_conversations(state=state, participant=participant)
        return web.json_response({"available": True, "conversations": _jsonable(rows)})

    async def conversation(self, request: web.Request) -> web.StreamResponse:
        system = self._conversation_system()
        if system is None:
            raise _HTTPError(404, "NotAvailable", "this node has no conversation storage")
        cid = request.match_info["conversation_id"]
        limit = _int_param(request, "limit", 500)
        record = await system.get_conversation(cid)
        count = int(record.get("message_count") or 0)
        history = await system.get_conversation_history(
            cid, offset=max(0, count - limit), limit=limit
        )
        return web.json_response({"conversation": _jsonable(record), "history": _jsonable(history)})


def _preview(content: Any, limit: int = 300) -> str:
    text = json.dumps(content, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redact(url: str) -> str:
    """Hide a password in a URL (``nats://user:secret@host`` -> ``nats://user:***@host``)."""
    if "SharedAccessKey=" in url:
        return ";".join(
            p if not p.startswith("SharedAccessKey=") else "SharedAccessKey=***"
            for p in url.split(";")
        )
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return url.replace(parts.netloc, netloc, 1)
    return url


_FIELDS = MESSAGE_FIELDS


def _message_fields(body: dict[str, Any], *, require_type: bool) -> dict[str, Any]:
    unknown = set(body) - set(_FIELDS) - {"delivery_mode", "idempotency_key", "delay", "timeout"}
    if unknown:
        raise _HTTPError(400, "InvalidMessageError", f"unknown fields {sorted(unknown)}")
    fields = {k: body[k] for k in _FIELDS if body.get(k) is not None}
    if require_type and "message_type" not in fields:
        raise _HTTPError(400, "InvalidMessageError", "message_type is required")
    content = fields.get("content")
    if content is not None and not isinstance(content, dict):
        fields["content"] = {"text": content}
    fields.setdefault("sender_id", "aos-cli")
    return fields
