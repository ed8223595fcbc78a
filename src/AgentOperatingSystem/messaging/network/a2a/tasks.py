"""A2A tasks and messages as a node keeps them, their state changes, and how they (and the
events of a stream) are rendered in the A2A 1.0 shapes or the 0.3 ones (``legacy``)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Mapping

from .parts import render_part

__all__ = [
    "INTERRUPTED",
    "STATE_V1",
    "TERMINAL",
    "A2AMessage",
    "A2ATask",
    "parse_state",
    "render_artifact",
    "render_event",
]

#: States a task does not leave.
TERMINAL = frozenset({"completed", "failed", "canceled", "rejected"})
#: States in which a task waits for its client (a blocking call returns in them).
INTERRUPTED = frozenset({"input-required", "auth-required"})
STATE_V1 = {
    "submitted": "TASK_STATE_SUBMITTED",
    "working": "TASK_STATE_WORKING",
    "completed": "TASK_STATE_COMPLETED",
    "failed": "TASK_STATE_FAILED",
    "canceled": "TASK_STATE_CANCELED",
    "rejected": "TASK_STATE_REJECTED",
    "input-required": "TASK_STATE_INPUT_REQUIRED",
    "auth-required": "TASK_STATE_AUTH_REQUIRED",
}


_STATE_OF = {**{v: k for k, v in STATE_V1.items()}, **{k: k for k in STATE_V1}}


def parse_state(value: str) -> str | None:
    """The state named ``value`` (``TASK_STATE_WORKING`` or the 0.3 ``working``), or None."""
    return _STATE_OF.get(value)


def stamp() -> str:
    """Now, as an A2A timestamp (UTC, microseconds, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class A2AMessage:
    """A message of a task's history: the user's, or the agent's answer."""

    message_id: str
    role: str  # "user" | "agent"
    parts: list[dict[str, Any]]
    context_id: str
    task_id: str
    metadata: dict[str, Any] | None = None

    def render(self, legacy: bool) -> dict[str, Any]:
        """The message in the 1.0 shape (the 0.3 one when ``legacy``)."""
        out: dict[str, Any] = {
            "messageId": self.message_id,
            "contextId": self.context_id,
            "taskId": self.task_id,
            "role": self.role if legacy else ("ROLE_USER" if self.role == "user" else "ROLE_AGENT"),
            "parts": [render_part(p, legacy) for p in self.parts],
        }
        if self.metadata:
            out["metadata"] = self.metadata
        if legacy:
            out["kind"] = "message"
        return out

    def record(self) -> dict[str, Any]:
        """The message as the task store keeps it."""
        return {
            "message_id": self.message_id,
            "role": self.role,
            "parts": self.parts,
            "context_id": self.context_id,
            "task_id": self.task_id,
            "metadata": self.metadata,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> A2AMessage:
        """The message of a :meth:`record`."""
        return cls(
            rec["message_id"],
            rec["role"],
            list(rec["parts"]),
            rec["context_id"],
            rec["task_id"],
            rec.get("metadata"),
        )


@dataclass
class A2ATask:
    """A task: whose it is (agent, caller), its state and history, the artifacts of the
    agent's answers, its push configs, and the queues of the streams and calls that listen
    to it."""

    id: str
    context_id: str
    agent_id: str
    owner: str = ""
    state: str = "submitted"
    history: list[A2AMessage] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    status_message: A2AMessage | None = None
    timestamp: str = field(default_factory=stamp)
    turns: int = 0
    push: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0
    listeners: list[asyncio.Queue[tuple[str, Any]]] = field(default_factory=list)
    #: events not yet handed to push notifications (see :meth:`drain`)
    changes: list[tuple[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The task as the task store keeps it (not its listeners)."""
        return {
            "id": self.id,
            "context_id": self.context_id,
            "agent_id": self.agent_id,
            "owner": self.owner,
            "state": self.state,
            "history": [m.record() for m in self.history],
            "artifacts": self.artifacts,
            "status_message": None if self.status_message is None else self.status_message.record(),
            "timestamp": self.timestamp,
            "turns": self.turns,
            "push": self.push,
            "events": self.events,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> A2ATask:
        """The task of a :meth:`record`."""
        status = rec.get("status_message")
        return cls(
            rec["id"],
            rec["context_id"],
            rec["agent_id"],
            rec.get("owner", ""),
            rec["state"],
            [A2AMessage.from_record(m) for m in rec.get("history", [])],
            list(rec.get("artifacts", [])),
            None if status is None else A2AMessage.from_record(status),
            rec["timestamp"],
            int(rec.get("turns", 0)),
            list(rec.get("push", [])),
            int(rec.get("events", 0)),
        )

    @property
    def terminal(self) -> bool:
        """True once the task is in a state it does not leave."""
        return self.state in TERMINAL

    def status(self, legacy: bool) -> dict[str, Any]:
        """The task's status object."""
        out: dict[str, Any] = {
            "state": self.state if legacy else STATE_V1[self.state],
            "timestamp": self.timestamp,
        }
        if self.status_message is not None:
            out["message"] = self.status_message.render(legacy)
        return out

    def render(
        self, legacy: bool, history_length: int | None = None, *, artifacts: bool = True
    ) -> dict[str, Any]:
        """The task object, with the last ``history_length`` messages (all when None), and
        its artifacts unless ``artifacts`` is False."""
        history = self.history
        if history_length is not None:
            history = history[-history_length:] if history_length > 0 else []
        out: dict[str, Any] = {
            "id": self.id,
            "contextId": self.context_id,
            "status": self.status(legacy),
            "artifacts": [render_artifact(a, legacy) for a in self.artifacts] if artifacts else [],
            "history": [m.render(legacy) for m in history],
        }
        if legacy:
            out["kind"] = "task"
        return out

    def emit(self, event: tuple[str, Any]) -> None:
        """Hand ``event`` (``("status", ...)`` or ``("artifact", ...)``) to every listener."""
        if event[0] in ("status", "artifact"):
            self.changes.append(event)
        for q in self.listeners:
            q.put_nowait(event)

    def take(self, newer: A2ATask) -> None:
        """Take the state of ``newer`` (the same task, as the store has it now)."""
        self.state, self.history, self.artifacts = newer.state, newer.history, newer.artifacts
        self.status_message, self.timestamp = newer.status_message, newer.timestamp
        self.turns, self.push, self.events = newer.turns, newer.push, newer.events

    def drain(self) -> list[tuple[str, Any]]:
        """The events since the last call (each task update, once)."""
        events, self.changes = self.changes, []
        return events

    def set_state(self, state: str, message: A2AMessage | None = None) -> None:
        """Move to ``state`` (with the agent's ``message``) and tell the listeners."""
        self.state = state
        self.timestamp = stamp()
        self.status_message = message
        self.emit(("status", (state, message, self.timestamp)))

    @property
    def interrupted(self) -> bool:
        """True while the task waits for its client (input or authentication)."""
        return self.state in INTERRUPTED

    def finish(self, state: str, text: str | None = None) -> None:
        """End in ``state``, with ``text`` as the agent's status message."""
        msg = None
        if text is not None:
            parts = [{"kind": "text", "text": text}]
            msg = A2AMessage(uuid.uuid4().hex, "agent", parts, self.context_id, self.id)
        self.set_state(state, msg)

    def complete(self, parts: list[dict[str, Any]]) -> None:
        """End ``completed`` with the agent's answer: an artifact and a reply message."""
        artifact = {"artifact_id": uuid.uuid4().hex, "name": "response", "parts": parts}
        self.artifacts.append(artifact)
        self.emit(("artifact", artifact))
        reply = A2AMessage(uuid.uuid4().hex, "agent", parts, self.context_id, self.id)
        self.history.append(reply)
        self.set_state("completed", reply)

    def ask(self, parts: list[dict[str, Any]]) -> None:
        """Wait for the client: ``input-required``, with the agent's question as a message."""
        question = A2AMessage(uuid.uuid4().hex, "agent", parts, self.context_id, self.id)
        self.history.append(question)
        self.set_state("input-required", question)


def render_artifact(artifact: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
    """An artifact object."""
    return {
        "artifactId": artifact["artifact_id"],
        "name": artifact["name"],
        "parts": [render_part(p, legacy) for p in artifact["parts"]],
    }


def render_event(task: A2ATask, event: tuple[str, Any], legacy: bool) -> dict[str, Any]:
    """A stream event (an artifact or a status update) of ``task``: ``{"kind":
    "artifact-update", ...}`` in the 0.3 protocol (``legacy``), ``{"artifactUpdate": {...}}``
    in 1.0 (likewise ``status-update``/``statusUpdate``)."""
    kind, payload = event
    ids = {"taskId": task.id, "contextId": task.context_id}
    if kind == "artifact":
        art = render_artifact(payload, legacy)
        update = {**ids, "artifact": art, "append": False, "lastChunk": True}
        return {"kind": "artifact-update", **update} if legacy else {"artifactUpdate": update}
    state, message, at = payload
    status: dict[str, Any] = {
        "state": state if legacy else STATE_V1[state],
        "timestamp": at,
    }
    if message is not None:
        status["message"] = message.render(legacy)
    if legacy:
        final = state in TERMINAL or state in INTERRUPTED
        return {"kind": "status-update", **ids, "status": status, "final": final}
    return {"statusUpdate": {**ids, "status": status}}
