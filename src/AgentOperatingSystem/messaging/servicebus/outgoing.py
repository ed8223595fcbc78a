"""A message on its way out: the manager's arguments to ``send_to_topic`` turned into the
:class:`~.entities.OutgoingMessage` every backend sends.

The message is copied with the explicit user properties and the system fields in its Service
Bus metadata; its user properties are the content's scalar fields, then the carried and the
given ones (which win); its system properties are the message id, correlation id, reply-to
and :data:`SYSTEM_KEYS`; its time to live and scheduled time are checked."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from ..errors import InvalidMessageError
from ..metadata import DLQ_ERROR, DLQ_REASON
from ..types import Message, MessageType
from .entities import (
    SERVICEBUS_KEY,
    Duration,
    OutgoingMessage,
    Scalar,
    application_properties,
    is_scalar,
    promoted_properties,
)
from .validation import positive_seconds

__all__ = ["SYSTEM_KEYS", "build_outgoing"]

SYSTEM_KEYS = ("subject", "content_type", "to", "session_id")
"""The system properties a message carries in its Service Bus metadata."""


def build_outgoing(
    message: Mapping[str, Any] | Message,
    properties: Mapping[str, Any] | None,
    system_fields: Mapping[str, Any],
    time_to_live: Duration | None,
    scheduled_enqueue_time: datetime | None,
) -> OutgoingMessage:
    """The :class:`OutgoingMessage` for ``send_to_topic``'s arguments (see the module)."""
    if isinstance(message, Message):
        base = message
        carried = application_properties(message)
    elif isinstance(message, Mapping):
        base = Message(message_type=MessageType.EVENT, content=dict(message))
        carried = {}
    else:
        raise InvalidMessageError(
            f"send_to_topic() takes a dict or a Message, not {type(message).__name__}"
        )
    promoted = promoted_properties(base.content)
    explicit: dict[str, Scalar] = {}
    for source in (carried, properties or {}):
        if not isinstance(source, Mapping):
            raise InvalidMessageError("properties must be a dict")
        for key, value in source.items():
            if not isinstance(key, str) or not key:
                raise InvalidMessageError("property names must be non-empty strings")
            if not is_scalar(value):
                raise InvalidMessageError(
                    f"property {key!r} must be a str, int, float or bool, not {value!r}"
                )
            if source is carried and key in promoted and promoted[key] == value:
                continue  # it comes from the content again
            explicit[key] = value
    props: dict[str, Scalar] = {**promoted, **explicit}
    for key, value in system_fields.items():
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidMessageError(f"{key} must be a non-empty string")
    message_id = system_fields.get("message_id") or base.message_id
    correlation_id = system_fields.get("correlation_id") or base.correlation_id
    reply_to = system_fields.get("reply_to") or base.reply_to
    old_info = base.metadata.get(SERVICEBUS_KEY)
    old_system = old_info.get("system") if isinstance(old_info, dict) else None
    carried_system = old_system if isinstance(old_system, dict) else {}
    system_extra: dict[str, str] = {}
    for key in SYSTEM_KEYS:
        value = system_fields.get(key) or carried_system.get(key)
        if key == "to" and value is None:
            value = base.recipient_id
        if key == "content_type" and value is None:
            value = "application/json"
        if isinstance(value, str) and value:
            system_extra[key] = value
    metadata = {
        k: v for k, v in base.metadata.items() if k not in (SERVICEBUS_KEY, DLQ_REASON, DLQ_ERROR)
    }
    # Only the properties that do not come from the content travel in the envelope.
    metadata[SERVICEBUS_KEY] = {"properties": explicit, "system": dict(system_extra)}
    msg = base.copy(
        message_id=message_id,
        correlation_id=correlation_id,
        reply_to=reply_to,
        metadata=metadata,
    )
    system: dict[str, str] = {"message_id": message_id, **system_extra}
    if correlation_id is not None:
        system["correlation_id"] = correlation_id
    if reply_to is not None:
        system["reply_to"] = reply_to
    ttl = positive_seconds("time_to_live", time_to_live, allow_none=True)
    if ttl is None and base.ttl is not None:
        ttl = float(base.ttl)
    if scheduled_enqueue_time is not None and (
        not isinstance(scheduled_enqueue_time, datetime) or scheduled_enqueue_time.tzinfo is None
    ):
        raise InvalidMessageError("scheduled_enqueue_time must be an aware datetime")
    return OutgoingMessage(msg, props, system, ttl, scheduled_enqueue_time)
