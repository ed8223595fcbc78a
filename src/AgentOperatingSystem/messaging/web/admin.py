"""The handlers of the node's ``/admin`` JSON API (the routes :mod:`.dashboard` installs
from :mod:`.routes`): info, queues, stats, one dead letter, send, request, the live tail and
conversations. Filtered and bulk dead letters are in :mod:`.deadletters`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..types import MESSAGE_FIELDS, Message, MessagePriority, MessageType
from .deadletters import dead_letter_dict
from .events import EventHub
from .jsonapi import MAX_LIMIT, HTTPError, int_param, json_body, jsonable

__all__ = ["AdminAPI", "message_to_dict"]

_OPTIONS = ("delivery_mode", "idempotency_key", "delay")
"""``/admin/send`` fields that are options of ``publish``, not fields of the message."""


def message_to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data (enums by name/value, times in ISO 8601)."""
    return {
        "message_id": message.message_id,
        "message_type": message.message_type.value,
        "sender_id": message.sender_id,
        "recipient_id": message.recipient_id,
        "content": jsonable(message.content),
        "timestamp": message.timestamp.isoformat(),
        "priority": message.priority.name,
        "metadata": jsonable(message.metadata),
        "correlation_id": message.correlation_id,
        "reply_to": message.reply_to,
        "ttl": message.ttl,
    }


class AdminAPI:
    """The route handlers (one instance per installed bus)."""

    def __init__(self, bus: Any, storage: Any, hub: EventHub, info: dict[str, Any]) -> None:
        self.bus = bus
        self.hub = hub
        self.info_extra = info
        self._storage = storage
        self._conversations: Any = None

    # -- info and queues ------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/info``: node, engine, bus id."""
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
            "conversations": self.conversation_system() is not None,
        }
        body.update(jsonable(self.info_extra))
        return web.json_response(body)

    def _subscribed(self) -> set[str]:
        return set(self.bus.subscriptions)

    async def queues(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/queues[?all=1]``: agents with depth, dead letters, subscribed."""
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
        """``GET /admin/stats``: counters per agent (when metrics are on)."""
        tel = self.hub.telemetry
        if tel is None or not tel.metrics_enabled:
            return web.json_response({"metrics": False, "agents": []})
        return web.json_response(
            {"metrics": True, "agents": [{"agent": a, **c} for a, c in tel.counts().items()]}
        )

    # -- dead letters -------------------------------------------------------------------

    async def _find_dead(self, agent: str, message_id: str) -> Message:
        for msg in await self.bus.get_dead_letter_messages(agent, MAX_LIMIT):
            if isinstance(msg, Message) and msg.message_id == message_id:
                return msg
        raise HTTPError(404, "UnknownMessageError", f"no dead letter {message_id!r} in {agent!r}")

    async def dlq_show(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/dlq/{agent}/{message_id}``: one dead letter in full."""
        agent = request.match_info["agent"]
        msg = await self._find_dead(agent, request.match_info["message_id"])
        return web.json_response(dead_letter_dict(msg, agent))

    async def dlq_resubmit(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/dlq/{agent}/{message_id}/resubmit``: put it back into its queue."""
        agent = request.match_info["agent"]
        message_id = request.match_info["message_id"]
        await self.bus.resubmit(message_id, agent)
        tel = self.hub.telemetry
        if tel is not None and self.hub.clients:
            tel.emit({"event": "resubmitted", "agent": agent, "message_id": message_id})
        return web.json_response({"resubmitted": message_id, "agent": agent})

    async def dlq_purge(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/dlq/{agent}/purge``: delete the agent's dead letters."""
        agent = request.match_info["agent"]
        purged = await self.bus.purge_dead_letters(agent)
        return web.json_response({"purged": purged, "agent": agent})

    # -- send / request -----------------------------------------------------------------

    async def send(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/send``: publish a message (JSON fields of Message)."""
        body = await json_body(request)
        fields = _message_fields(body, require_type=True)
        options = {k: body[k] for k in _OPTIONS if body.get(k) is not None}
        result = await self.bus.publish(**fields, **options)
        return web.json_response(
            {
                "message_id": result.message_id,
                "recipients": list(result.recipients),
                "duplicate": result.duplicate,
            }
        )

    async def request(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/request``: request/response, waits for the answer."""
        body = await json_body(request)
        recipient = body.get("recipient_id")
        if not isinstance(recipient, str) or not recipient:
            raise HTTPError(400, "InvalidMessageError", "recipient_id is required")
        timeout = body.get("timeout", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise HTTPError(400, "InvalidMessageError", "timeout must be a positive number")
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
        """``GET /admin/tail[?agent=A&type=T]``: live events (Server-Sent Events)."""
        if self.hub.telemetry is None:
            raise HTTPError(
                501, "NotAvailable", "the bus's telemetry is not a BusTelemetry: no live stream"
            )
        agent = request.query.get("agent") or None
        message_type = request.query.get("type") or None
        return await self.hub.stream(request, agent, message_type)

    # -- conversations ------------------------------------------------------------------

    def conversation_system(self) -> Any:
        """The conversation system of the node's storage (None: no conversation storage)."""
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
        """``GET /admin/conversations[?state=&participant=]``: conversations."""
        system = self.conversation_system()
        if system is None:
            return web.json_response({"available": False, "conversations": []})
        state = request.query.get("state") or None
        participant = request.query.get("participant") or None
        rows = await system.list_conversations(state=state, participant=participant)
        return web.json_response({"available": True, "conversations": jsonable(rows)})

    async def conversation(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/conversations/{id}[?limit=N]``: one conversation with its turns."""
        system = self.conversation_system()
        if system is None:
            raise HTTPError(404, "NotAvailable", "this node has no conversation storage")
        cid = request.match_info["conversation_id"]
        limit = int_param(request, "limit", 500)
        record = await system.get_conversation(cid)
        count = int(record.get("message_count") or 0)
        history = await system.get_conversation_history(
            cid, offset=max(0, count - limit), limit=limit
        )
        return web.json_response({"conversation": jsonable(record), "history": jsonable(history)})


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


def _message_fields(body: dict[str, Any], *, require_type: bool) -> dict[str, Any]:
    unknown = set(body) - set(MESSAGE_FIELDS) - {*_OPTIONS, "timeout"}
    if unknown:
        raise HTTPError(400, "InvalidMessageError", f"unknown fields {sorted(unknown)}")
    fields = {k: body[k] for k in MESSAGE_FIELDS if body.get(k) is not None}
    if require_type and "message_type" not in fields:
        raise HTTPError(400, "InvalidMessageError", "message_type is required")
    content = fields.get("content")
    if content is not None and not isinstance(content, dict):
        fields["content"] = {"text": content}
    fields.setdefault("sender_id", "aos-cli")
    return fields
