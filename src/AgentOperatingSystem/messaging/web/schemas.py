"""JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of the admin API's bodies.

:data:`COMPONENTS` is the ``components.schemas`` section of ``/admin/openapi.json``; the
route table (:mod:`.routes`) names these schemas by key, so a route and the shape of what it
answers are written down once, next to each other.
"""

from __future__ import annotations

from typing import Any

from ..types import MessagePriority, MessageType

__all__ = ["COMPONENTS", "ref"]

Schema = dict[str, Any]

_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_BOOL: Schema = {"type": "boolean"}
_NUM: Schema = {"type": "number"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def ref(name: str) -> Schema:
    """A ``$ref`` to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    props = {**required, **(optional or {})}
    return {"type": "object", "required": sorted(required), "properties": props}


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


_MESSAGE_TYPES = [m.value for m in MessageType]
_PRIORITIES = [m.name for m in MessagePriority]

_MESSAGE: Schema = _obj(
    {
        "message_id": _STR,
        "message_type": {"type": "string", "enum": _MESSAGE_TYPES},
        "sender_id": _STR,
        "recipient_id": _nullable(_STR),
        "content": {},
        "timestamp": _STR,
        "priority": {"type": "string", "enum": _PRIORITIES},
        "metadata": {"type": "object"},
        "correlation_id": _nullable(_STR),
        "reply_to": _nullable(_STR),
        "ttl": _nullable(_NUM),
    }
)

_DEAD_LETTER: Schema = {
    "allOf": [
        ref("Message"),
        _obj(
            {
                "agent": _STR,
                "reason": _nullable(_STR),
                "error": _nullable(_STR),
                "attempts": _nullable(_INT),
                "dead_lettered_at": _nullable(_STR),
            }
        ),
    ]
}

_ID = {"type": "string", "minLength": 1, "maxLength": 256}

_SEND_BODY: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["message_type"],
    "properties": {
        "message_type": {"type": "string", "enum": _MESSAGE_TYPES},
        "recipient_id": _ID,
        "sender_id": _ID,
        "content": {"type": "object"},
        "priority": {"type": "string", "enum": _PRIORITIES},
        "metadata": {"type": "object"},
        "correlation_id": _ID,
        "reply_to": _ID,
        "ttl": {"type": "integer", "minimum": 1, "maximum": 86_400},
        "message_id": _ID,
        "delivery_mode": {
            "type": "string",
            "enum": ["at_least_once", "at_most_once", "exactly_once"],
        },
        "idempotency_key": _ID,
        "delay": {"type": "number", "minimum": 0, "maximum": 86_400},
    },
}

_REQUEST_BODY: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["recipient_id"],
    "properties": {
        "recipient_id": _ID,
        "sender_id": _ID,
        "content": {"type": "object"},
        "message_type": {"type": "string", "enum": _MESSAGE_TYPES},
        "priority": {"type": "string", "enum": _PRIORITIES},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
    },
}

_DLQ_FILTER: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "agent": _ID,
        "reason": _ID,
        "since": {"type": "string", "format": "date-time"},
        "until": {"type": "string", "format": "date-time"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 10_000},
    },
}

_SAMPLE: Schema = _obj(
    {
        "t": _NUM,
        "published": _NUM,
        "acked": _NUM,
        "dead_lettered": _NUM,
        "depth": _INT,
        "p50_ms": _nullable(_NUM),
        "p95_ms": _nullable(_NUM),
    }
)

_STEP: Schema = _obj(
    {"kind": {"type": "string", "enum": ["attempt", "resubmitted", "dead_letter"]}, "agent": _STR},
    {
        "attempt": _INT,
        "ok": _BOOL,
        "error": _nullable(_STR),
        "at": _nullable(_NUM),
        "duration_ms": _nullable(_NUM),
        "reason": _nullable(_STR),
    },
)

_TRACE_NODE: Schema = _obj(
    {
        "message_id": _STR,
        "message_type": _STR,
        "sender": _nullable(_STR),
        "queues": _array(_STR),
        "correlation_id": _nullable(_STR),
        "causation_id": _nullable(_STR),
        "published_at": _nullable(_NUM),
        "content": _nullable(_STR),
        "steps": _array(ref("TraceStep")),
        "children": _array(ref("TraceNode")),
    }
)

_ARROW: Schema = _obj(
    {
        "index": _INT,
        "message_id": _STR,
        "message_type": _STR,
        "from": _STR,
        "to": _STR,
        "at": _NUM,
        "latency_ms": _nullable(_NUM),
        "content": _nullable(_STR),
        "encrypted": _BOOL,
    }
)

COMPONENTS: dict[str, Schema] = {
    "Error": _obj({"error": _obj({"type": _STR, "message": _STR})}),
    "Info": _obj(
        {
            "bus_id": _nullable(_STR),
            "broker_url": _nullable(_STR),
            "started": _BOOL,
            "metrics": _BOOL,
            "tracing": _BOOL,
            "stream_clients": _INT,
            "conversations": _BOOL,
        }
    ),
    "Queues": _obj(
        {
            "queues": _array(
                _obj(
                    {
                        "agent": _STR,
                        "depth": _INT,
                        "dead_letters": _INT,
                        "subscribed": _BOOL,
                    }
                )
            )
        }
    ),
    "Stats": _obj(
        {
            "metrics": _BOOL,
            "agents": _array(
                _obj(
                    {"agent": _STR},
                    {
                        k: _INT
                        for k in (
                            "published",
                            "delivered",
                            "acked",
                            "nacked",
                            "dead_lettered",
                            "expired",
                            "errors",
                        )
                    },
                )
            ),
        }
    ),
    "Message": _MESSAGE,
    "DeadLetter": _DEAD_LETTER,
    "DeadLetters": _obj({"dead_letters": _array(ref("DeadLetter"))}),
    "DeadLetterCount": _obj(
        {"count": _INT, "by_agent": {"type": "object", "additionalProperties": _INT}}
    ),
    "DeadLetterFilter": _DLQ_FILTER,
    "BulkResubmitted": _obj(
        {"resubmitted": _INT, "message_ids": _array(_STR), "failed": _array(_STR)}
    ),
    "BulkPurged": _obj({"purged": _INT, "by_agent": {"type": "object"}}),
    "Resubmitted": _obj({"resubmitted": _STR, "agent": _STR}),
    "Purged": _obj({"purged": _INT, "agent": _STR}),
    "SendBody": _SEND_BODY,
    "Sent": _obj({"message_id": _STR, "recipients": _array(_STR), "duplicate": _BOOL}),
    "RequestBody": _REQUEST_BODY,
    "Response": _obj({"response": ref("Message")}),
    "Conversations": _obj({"available": _BOOL, "conversations": _array({"type": "object"})}),
    "Conversation": _obj(
        {"conversation": {"type": "object"}, "history": _array({"type": "object"})}
    ),
    "Arrow": _ARROW,
    "Timeline": _obj(
        {"conversation_id": _STR, "lanes": _array(_STR), "arrows": _array(ref("Arrow"))}
    ),
    "TraceStep": _STEP,
    "TraceNode": _TRACE_NODE,
    "Trace": _obj({"id": _STR, "roots": _array(ref("TraceNode"))}),
    "Sample": _SAMPLE,
    "Series": _obj(
        {
            "interval": _NUM,
            "capacity": _INT,
            "agents": {"type": "object", "additionalProperties": _array(ref("Sample"))},
        }
    ),
    "Empty": {"type": "object"},
    "Tasks": _obj(
        {
            "available": _BOOL,
            "tasks": _array(
                _obj(
                    {
                        "task_id": _STR,
                        "context_id": _STR,
                        "agent_id": _STR,
                        "owner": _STR,
                        "state": _STR,
                        "updated_at": _STR,
                        "turns": _INT,
                        "question": _STR,
                    }
                )
            ),
        }
    ),
    "AnswerBody": {
        "type": "object",
        "additionalProperties": False,
        "required": ["text"],
        "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 100_000}},
    },
    "Answered": _obj({"task_id": _STR, "state": _STR}),
    "OpenAPI": {"type": "object", "required": ["openapi", "paths"]},
}
"""The component schemas of the admin API."""
