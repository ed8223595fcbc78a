"""Dead letters at scale: filter by agent, reason and time; count, resubmit or purge the
filtered set in one call (``/admin/dlq``, ``/admin/dlq/count``, ``/admin/dlq/resubmit``,
``/admin/dlq/purge``).

A filtered purge works per agent on the whole dead-letter queue (the engines delete an
agent's dead letters all at once): when a filter selects only part of an agent's dead
letters, the purge is refused (409) before anything is deleted and says how many it would
have left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Mapping

from aiohttp import web

from ..errors import UnknownMessageError
from ..metadata import DLQ_AT, DLQ_ERROR, DLQ_QUEUE, DLQ_REASON
from ..types import Message
from .events import EventHub
from .jsonapi import MAX_LIMIT, HTTPError, json_body, jsonable

__all__ = ["DeadLetterAPI", "DeadLetterFilter", "dead_letter_dict"]

_FIELDS = ("agent", "reason", "since", "until", "limit")


def _time(name: str, raw: Any) -> float | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise HTTPError(400, "InvalidParameter", f"{name} must be an ISO 8601 date-time")
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise HTTPError(400, "InvalidParameter", f"{name} must be an ISO 8601 date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _text(name: str, raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise HTTPError(400, "InvalidParameter", f"{name} must be a string")
    return raw


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters: of ``agent`` (else every agent), with ``reason``, dead-lettered
    in ``[since, until)`` (epoch seconds), at most ``limit``."""

    agent: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = MAX_LIMIT

    @classmethod
    def parse(cls, data: Mapping[str, Any], default_limit: int = MAX_LIMIT) -> DeadLetterFilter:
        """The filter of query parameters or a JSON body (400 on a bad value)."""
        unknown = set(data) - set(_FIELDS) - {"token"}
        if unknown:
            raise HTTPError(400, "InvalidParameter", f"unknown filter fields {sorted(unknown)}")
        raw_limit = data.get("limit")
        limit = default_limit
        if raw_limit is not None and raw_limit != "":
            try:
                limit = int(raw_limit)
            except (TypeError, ValueError):
                raise HTTPError(400, "InvalidParameter", "limit must be an integer") from None
            if isinstance(raw_limit, (bool, float)) or not 1 <= limit <= MAX_LIMIT:
                raise HTTPError(400, "InvalidParameter", f"limit must be in 1..{MAX_LIMIT}")
        return cls(
            agent=_text("agent", data.get("agent")),
            reason=_text("reason", data.get("reason")),
            since=_time("since", data.get("since")),
            until=_time("until", data.get("until")),
            limit=limit,
        )

    def matches(self, message: Message) -> bool:
        """True when the dead letter ``message`` (with its ``aos.dead_letter.*`` metadata)
        passes the reason and time parts of the filter."""
        meta = message.metadata
        if self.reason is not None and meta.get(DLQ_REASON) != self.reason:
            return False
        if self.since is not None or self.until is not None:
            at = _epoch(meta.get(DLQ_AT))
            if at is None:
                return False
            if self.since is not None and at < self.since:
                return False
            if self.until is not None and at >= self.until:
                return False
        return True


def _epoch(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return None


def _iso(epoch: Any) -> str | None:
    at = _epoch(epoch)
    return None if at is None else datetime.fromtimestamp(at, tz=UTC).isoformat()


def dead_letter_dict(message: Message, agent: str, *, preview: bool = False) -> dict[str, Any]:
    """A dead letter as JSON-ready data: the message and why it is there (``content`` as a
    short JSON preview when ``preview``)."""
    meta = message.metadata
    attempts = meta.get("aos.dead_letter.attempts")
    content: Any = jsonable(message.content)
    if preview:
        text = json.dumps(content, ensure_ascii=False)
        content = text if len(text) <= 300 else text[:297] + "..."
    return {
        "message_id": message.message_id,
        "message_type": message.message_type.value,
        "sender_id": message.sender_id,
        "recipient_id": message.recipient_id,
        "content": content,
        "timestamp": message.timestamp.isoformat(),
        "priority": message.priority.name,
        "metadata": jsonable(meta),
        "correlation_id": message.correlation_id,
        "reply_to": message.reply_to,
        "ttl": message.ttl,
        "agent": str(meta.get(DLQ_QUEUE) or agent),
        "reason": _str_or_none(meta.get(DLQ_REASON)),
        "error": _str_or_none(meta.get(DLQ_ERROR)),
        "attempts": attempts
        if isinstance(attempts, int) and not isinstance(attempts, bool)
        else None,
        "dead_lettered_at": _iso(meta.get(DLQ_AT)),
    }


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


class DeadLetterAPI:
    """The filtered and bulk dead-letter routes of one bus."""

    def __init__(self, bus: Any, hub: EventHub) -> None:
        self.bus = bus
        self.hub = hub

    async def _agents(self, flt: DeadLetterFilter) -> list[str]:
        if flt.agent is not None:
            return [flt.agent]
        return [q for q in sorted(await self.bus.queues()) if await self.bus.dead_letter_depth(q)]

    async def select(self, flt: DeadLetterFilter) -> dict[str, list[Message]]:
        """Per agent, the dead letters ``flt`` selects (oldest first, ``flt.limit`` in all)."""
        out: dict[str, list[Message]] = {}
        left = flt.limit
        for agent in await self._agents(flt):
            if left <= 0:
                break
            chosen = [
                m
                for m in await self.bus.get_dead_letter_messages(agent, MAX_LIMIT)
                if isinstance(m, Message) and flt.matches(m)
            ][:left]
            if chosen:
                out[agent] = chosen
                left -= len(chosen)
        return out

    async def dlq_list(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/dlq[?agent=&reason=&since=&until=&limit=]``: the filtered dead
        letters, with a content preview."""
        flt = DeadLetterFilter.parse(request.query, default_limit=100)
        rows = [
            dead_letter_dict(m, agent, preview=True)
            for agent, msgs in (await self.select(flt)).items()
            for m in msgs
        ]
        return web.json_response({"dead_letters": rows})

    async def dlq_count(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/dlq/count[?agent=&reason=&since=&until=]``: how many a bulk action
        with this filter would touch, per agent."""
        flt = DeadLetterFilter.parse(request.query)
        chosen = await self.select(flt)
        by_agent = {agent: len(msgs) for agent, msgs in chosen.items()}
        return web.json_response({"count": sum(by_agent.values()), "by_agent": by_agent})

    async def dlq_bulk_resubmit(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/dlq/resubmit`` with a filter body: resubmit the selected set."""
        flt = DeadLetterFilter.parse(await json_body(request))
        done: list[str] = []
        failed: list[str] = []
        tel = self.hub.telemetry
        for agent, msgs in (await self.select(flt)).items():
            for m in msgs:
                try:
                    await self.bus.resubmit(m.message_id, agent)
                except UnknownMessageError:
                    failed.append(m.message_id)  # resubmitted or purged meanwhile
                    continue
                done.append(m.message_id)
                if tel is not None and self.hub.clients:
                    tel.emit({"event": "resubmitted", "agent": agent, "message_id": m.message_id})
        return web.json_response({"resubmitted": len(done), "message_ids": done, "failed": failed})

    async def dlq_bulk_purge(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/dlq/purge`` with a filter body: purge the selected set, which must
        be whole agents' dead-letter queues (else 409, nothing deleted)."""
        flt = DeadLetterFilter.parse(await json_body(request))
        chosen = await self.select(flt)
        partial = {}
        for agent, msgs in chosen.items():
            depth = int(await self.bus.dead_letter_depth(agent))
            if len(msgs) != depth:
                partial[agent] = depth - len(msgs)
        if partial:
            raise HTTPError(
                409,
                "PartialPurge",
                "a purge deletes an agent's dead letters all at once; this filter would "
                f"leave some behind ({partial}): resubmit them, or widen the filter",
            )
        by_agent = {agent: int(await self.bus.purge_dead_letters(agent)) for agent in chosen}
        return web.json_response({"purged": sum(by_agent.values()), "by_agent": by_agent})
