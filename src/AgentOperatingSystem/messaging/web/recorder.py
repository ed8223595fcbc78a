"""What the node saw of each message, for the causation tree and the conversation timeline.

A :class:`MessageRecorder` is an :class:`~.events.EventHub` observer: for every ``published``
event it keeps the message's id, type, sender, queues, correlation id, a content preview and
its **causation id**, the id of the message whose handler published it (read from the
delivery context, :mod:`..core.context`, exactly as the publish path does when it writes the
id into the envelope); for every ``handled`` event, the attempt (agent, number, ok, error,
duration); for a ``resubmitted`` event, that step. It holds at most ``capacity`` messages
(the oldest go first) and ``MAX_STEPS`` steps per message.

It records while the hub listens to the bus: while a dashboard page (or any ``/admin/tail``
client) is open, or always when the dashboard was installed with ``record=True``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..core.context import current

__all__ = ["DEFAULT_RECORDS", "MAX_STEPS", "MessageRecorder", "Record", "Step"]

DEFAULT_RECORDS = 5000
"""Messages a recorder keeps."""
MAX_STEPS = 50
"""Steps (attempts, resubmits) kept per message."""


@dataclass(slots=True)
class Step:
    """Something that happened to a message in one agent's queue."""

    kind: str  # "attempt", "resubmitted" or "dead_letter"
    agent: str
    at: float | None
    attempt: int | None = None
    ok: bool | None = None
    error: str | None = None
    duration_ms: float | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, without the fields that do not apply."""
        out: dict[str, Any] = {"kind": self.kind, "agent": self.agent, "at": self.at}
        for name in ("attempt", "ok", "error", "duration_ms", "reason"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(slots=True)
class Record:
    """One published message as the node saw it."""

    message_id: str
    message_type: str
    sender: str | None
    recipient: str | None
    queues: list[str]
    correlation_id: str | None
    causation_id: str | None
    published_at: float | None
    content: str | None
    steps: list[Step] = field(default_factory=list)

    def first_start(self, agent: str) -> float | None:
        """When ``agent``'s handler first started on it (None: not seen)."""
        for step in self.steps:
            if step.kind == "attempt" and step.agent == agent and step.at is not None:
                return step.at - (step.duration_ms or 0.0) / 1000.0
        return None


class MessageRecorder:
    """The bounded record of recent messages, fed by the hub's events."""

    def __init__(self, capacity: int = DEFAULT_RECORDS) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, message_id: str) -> Record | None:
        """The record of ``message_id``."""
        return self._records.get(message_id)

    def records(self) -> list[Record]:
        """Every record, oldest first."""
        return list(self._records.values())

    def __call__(self, event: dict[str, Any]) -> None:
        """Take one bus event (the hub calls this for each)."""
        kind = event.get("event")
        mid = event.get("message_id")
        if not isinstance(mid, str):
            return
        if kind == "published":
            self._published(mid, event)
            return
        record = self._records.get(mid)
        if record is None or len(record.steps) >= MAX_STEPS:
            return
        at = _number(event.get("time"))
        agent = str(event.get("agent") or "")
        if kind == "handled":
            record.steps.append(
                Step(
                    "attempt",
                    agent,
                    at,
                    attempt=_int(event.get("attempt")),
                    ok=bool(event.get("ok")),
                    error=event.get("error") if isinstance(event.get("error"), str) else None,
                    duration_ms=_number(event.get("duration_ms")),
                )
            )
        elif kind == "resubmitted":
            record.steps.append(Step("resubmitted", agent, at))

    def _published(self, mid: str, event: dict[str, Any]) -> None:
        running = current.get()
        causation = running.message.message_id if running is not None else None
        correlation = _str(event.get("correlation_id"))
        if causation is None and event.get("message_type") == "response":
            # A response published after its handler returned answers its request.
            if correlation is not None and correlation in self._records:
                causation = correlation
        queues = event.get("queues")
        content = event.get("content")
        record = Record(
            message_id=mid,
            message_type=str(event.get("message_type") or ""),
            sender=_str(event.get("sender")),
            recipient=_str(event.get("recipient")),
            queues=[str(q) for q in queues] if isinstance(queues, list) else [],
            correlation_id=correlation,
            causation_id=causation if causation != mid else None,
            published_at=_number(event.get("time")),
            content=content if isinstance(content, str) else None,
        )
        old = self._records.pop(mid, None)
        if old is not None:  # published again (a resubmit through publish): keep its steps
            record.steps = old.steps
        self._records[mid] = record
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
