"""The causation tree of a message (``GET /admin/trace/{id}``) and a conversation as a
timeline (``GET /admin/conversations/{id}/timeline``), from what the node recorded
(:mod:`.recorder`) and, for dead letters and stored turns, what the engine and the store hold.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from aiohttp import web

from ..errors import ConversationNotFoundError
from ..metadata import DLQ_AT, DLQ_REASON
from ..types import Message
from .jsonapi import MAX_LIMIT, HTTPError, jsonable
from .recorder import MessageRecorder, Record, Step

__all__ = ["TraceAPI"]

_MAX_NODES = 500
"""Messages one tree shows at most."""


def _encrypted(content: Any) -> bool:
    """True for content this node could not open (no key for it)."""
    if isinstance(content, dict):
        return "DecryptionError" in str(content.get("decode_error", ""))
    return content is None


class TraceAPI:
    """The trace and timeline routes of one bus."""

    def __init__(
        self, bus: Any, recorder: MessageRecorder, conversations: Callable[[], Any]
    ) -> None:
        self.bus = bus
        self.recorder = recorder
        self._conversations = conversations

    # -- causation ------------------------------------------------------------------------

    async def _dead_letters(self, queue: str) -> dict[str, Message]:
        try:
            if not await self.bus.dead_letter_depth(queue):
                return {}
            found = await self.bus.get_dead_letter_messages(queue, MAX_LIMIT)
        except Exception:  # a queue the engine does not know (a reply queue)
            return {}
        return {m.message_id: m for m in found if isinstance(m, Message)}

    async def tree(self, trace_id: str) -> list[dict[str, Any]]:
        """The causation trees of ``trace_id``: the message of that id, or the messages of
        that correlation id that nothing else in it caused. Empty when unknown."""
        records = self.recorder.records()
        root = self.recorder.get(trace_id)
        if root is not None:
            roots = [root]
        else:
            group = [r for r in records if r.correlation_id == trace_id]
            ids = {r.message_id for r in group}
            roots = [r for r in group if r.causation_id not in ids]
        children: dict[str, list[Record]] = {}
        for r in records:
            if r.causation_id is not None:
                children.setdefault(r.causation_id, []).append(r)
        dead: dict[str, dict[str, Message]] = {}
        budget = [_MAX_NODES]

        async def node(r: Record) -> dict[str, Any]:
            budget[0] -= 1
            steps = [s.as_dict() for s in r.steps]
            for queue in r.queues:
                if queue not in dead:
                    dead[queue] = await self._dead_letters(queue)
                dl = dead[queue].get(r.message_id)
                if dl is not None:
                    meta = dl.metadata
                    at = meta.get(DLQ_AT)
                    steps.append(
                        Step(
                            "dead_letter",
                            queue,
                            float(at) if isinstance(at, (int, float)) else None,
                            reason=str(meta.get(DLQ_REASON)),
                            error=_text(meta.get("aos.dead_letter.error")),
                        ).as_dict()
                    )
            kids = []
            for child in children.get(r.message_id, []):
                if budget[0] <= 0:
                    break
                kids.append(await node(child))
            return {
                "message_id": r.message_id,
                "message_type": r.message_type,
                "sender": r.sender,
                "queues": r.queues,
                "correlation_id": r.correlation_id,
                "causation_id": r.causation_id,
                "published_at": r.published_at,
                "content": r.content,
                "steps": steps,
                "children": kids,
            }

        return [await node(r) for r in roots if budget[0] > 0]

    async def trace(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/trace/{trace_id}``: the causation tree (404 when the node saw
        nothing of that id)."""
        trace_id = request.match_info["trace_id"]
        roots = await self.tree(trace_id)
        if not roots:
            raise HTTPError(
                404,
                "UnknownMessageError",
                f"this node recorded no message with id or correlation id {trace_id!r}",
            )
        return web.json_response({"id": trace_id, "roots": roots})

    # -- timeline -------------------------------------------------------------------------

    def _recorded_arrows(self, cid: str) -> list[dict[str, Any]]:
        arrows: list[dict[str, Any]] = []
        group = [r for r in self.recorder.records() if r.correlation_id == cid]
        group.sort(key=lambda r: r.published_at or 0.0)
        for r in group:
            for queue in r.queues or ([r.recipient] if r.recipient else []):
                to = r.recipient if queue.startswith("_") and r.recipient else queue
                start = r.first_start(queue)
                latency = None
                if start is not None and r.published_at is not None:
                    latency = round(max(0.0, start - r.published_at) * 1000.0, 3)
                arrows.append(
                    {
                        "message_id": r.message_id,
                        "message_type": r.message_type,
                        "from": r.sender or "?",
                        "to": to or "?",
                        "at": r.published_at or 0.0,
                        "latency_ms": latency,
                        "content": r.content,
                        "encrypted": r.content is None,
                    }
                )
        return arrows

    async def _stored(self, cid: str) -> tuple[list[str], list[dict[str, Any]]] | None:
        system = self._conversations()
        if system is None:
            return None
        try:
            record = await system.get_conversation(cid)
        except ConversationNotFoundError:
            return None
        participants = [str(p) for p in record.get("participants") or []]
        history = await system.get_conversation_history(cid, limit=MAX_LIMIT)
        arrows: list[dict[str, Any]] = []
        previous: float | None = None
        for turn in history:
            at = _epoch(turn.get("timestamp"))
            content = turn.get("content")
            for to in [p for p in participants if p != turn.get("sender_id")]:
                arrows.append(
                    {
                        "message_id": str(turn.get("message_id")),
                        "message_type": str(turn.get("message_type")),
                        "from": str(turn.get("sender_id")),
                        "to": to,
                        "at": at,
                        "latency_ms": None
                        if previous is None
                        else round(max(0.0, at - previous) * 1000.0, 3),
                        "content": None if _encrypted(content) else _preview(content),
                        "encrypted": _encrypted(content),
                    }
                )
            previous = at
        return participants, arrows

    async def timeline(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/conversations/{conversation_id}/timeline``: lanes (agents) and arrows
        (messages, in time order, with latency and id). What the node recorded of the
        conversation's messages when it has any, else the stored turns (latency: time since
        the turn before)."""
        cid = request.match_info["conversation_id"]
        stored = await self._stored(cid)
        lanes: list[str] = list(stored[0]) if stored else []
        arrows = self._recorded_arrows(cid)
        if not arrows and stored:
            arrows = stored[1]
        if not arrows and stored is None:
            raise HTTPError(404, "ConversationNotFoundError", f"no conversation {cid!r}")
        arrows.sort(key=lambda a: a["at"])
        for i, arrow in enumerate(arrows):
            arrow["index"] = i
            for who in (arrow["from"], arrow["to"]):
                if who not in lanes:
                    lanes.append(who)
        return web.json_response(
            {"conversation_id": cid, "lanes": lanes, "arrows": jsonable(arrows)}
        )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _preview(content: Any) -> str:
    text = content if isinstance(content, str) else str(jsonable(content))
    return text if len(text) <= 300 else text[:297] + "..."


def _epoch(value: Any) -> float:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return 0.0
    return 0.0
