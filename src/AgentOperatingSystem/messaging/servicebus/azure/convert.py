"""Message and value conversion between our types and the SDK's.

Outgoing: a ``ServiceBusMessage`` whose body is the JSON of the content, with the system
fields, time to live and schedule; the user properties become ``application_properties``, and
an AOS message's sender, type, priority and metadata travel as :data:`AOS_PROPERTIES`.
Incoming: received ``application_properties`` arrive with ``bytes`` keys and string values
(a property of the AMQP layer) and are decoded to ``str``; ``delivery_count`` is reported as
Azure's .NET SDK does (1 on the first delivery; the AMQP header holds one less).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from ...errors import InvalidMessageError, MessagingError
from ...metadata import DLQ_ERROR, DLQ_REASON
from ...types import Message, MessagePriority, MessageType, new_message_id
from ..entities import SERVICEBUS_KEY, OutgoingMessage
from .sdk import ServiceBusMessage

__all__ = [
    "AOS_PROPERTIES",
    "NEVER",
    "content_of",
    "duration",
    "from_received",
    "seconds_of",
    "str_or_none",
    "text_of",
    "to_service_bus_message",
]

#: Application properties Azure adds to dead letters; not user properties.
DLQ_PROPERTIES = ("DeadLetterReason", "DeadLetterErrorDescription")
AOS_SENDER = "aos-sender"
AOS_TYPE = "aos-type"
AOS_PRIORITY = "aos-priority"
AOS_METADATA = "aos-metadata"
#: The application properties that carry an AOS message's own fields.
AOS_PROPERTIES = (AOS_SENDER, AOS_TYPE, AOS_PRIORITY, AOS_METADATA)
NEVER = timedelta(days=3650 * 1000)
"""Azure reports "never expires" as TimeSpan.MaxValue (about 29 227 years)."""


def text_of(value: Any) -> Any:
    """A value the AMQP layer delivered, with bytes decoded (UTF-8, else base64)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode()
    return value


def str_or_none(value: Any) -> str | None:
    """:func:`text_of` the value as a str, or None."""
    value = text_of(value)
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def duration(seconds: float | None) -> timedelta | None:
    """Seconds as the SDK's timedelta (None stays None)."""
    return None if seconds is None else timedelta(seconds=seconds)


def seconds_of(value: Any) -> float | None:
    """A duration the SDK read, in seconds; None for "never" or what it could not parse."""
    if value is None:
        return None
    if isinstance(value, str):  # ISO 8601 duration the SDK could not parse
        return None
    if isinstance(value, timedelta):
        return None if value >= NEVER else value.total_seconds()
    return None


def to_service_bus_message(outgoing: OutgoingMessage) -> ServiceBusMessage:
    """The SDK message for one on its way to a topic (see the package docstring)."""
    msg = outgoing.message
    props: dict[str | bytes, Any] = {k: v for k, v in outgoing.properties.items()}
    if msg.sender_id != "anonymous":
        props[AOS_SENDER] = msg.sender_id
    if msg.message_type is not MessageType.EVENT:
        props[AOS_TYPE] = msg.message_type.value
    if msg.priority is not MessagePriority.NORMAL:
        props[AOS_PRIORITY] = msg.priority.value
    extra = {k: v for k, v in msg.metadata.items() if k != SERVICEBUS_KEY}
    if extra:
        props[AOS_METADATA] = json.dumps(extra, separators=(",", ":"))
    system = outgoing.system
    try:
        body = json.dumps(msg.content, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidMessageError(f"message content is not JSON-serialisable: {exc}") from exc
    return ServiceBusMessage(
        body,
        application_properties=props,
        message_id=system.get("message_id"),
        correlation_id=system.get("correlation_id"),
        reply_to=system.get("reply_to"),
        to=system.get("to"),
        subject=system.get("subject"),
        session_id=system.get("session_id"),
        content_type=system.get("content_type", "application/json"),
        time_to_live=duration(outgoing.time_to_live),
        scheduled_enqueue_time_utc=outgoing.scheduled_enqueue_time,
    )


def content_of(sb_message: Any) -> dict[str, Any]:
    """A received message's body as our content: a JSON object, else wrapped in a dict."""
    body_type = str(getattr(sb_message, "body_type", "data")).lower()
    body = sb_message.body
    if "value" in body_type:
        value = text_of(body)
        if isinstance(value, dict):
            return {str(text_of(k)): text_of(v) for k, v in value.items()}
        return {"value": value}
    if "sequence" in body_type:
        return {"value": [text_of(item) for item in body]}
    raw = b"".join(bytes(part) for part in body) if not isinstance(body, bytes) else body
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(raw).decode()}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"body": text}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def from_received(sb_message: Any, topic: str, sub: str, *, dead: bool) -> Message:
    """Our message for one received (or, ``dead``, peeked from the dead-letter queue)."""
    raw_props = sb_message.application_properties or {}
    props: dict[str, Any] = {str(text_of(k)): text_of(v) for k, v in raw_props.items()}
    sender = props.pop(AOS_SENDER, None)
    type_name = props.pop(AOS_TYPE, None)
    priority = props.pop(AOS_PRIORITY, None)
    meta_text = props.pop(AOS_METADATA, None)
    for key in DLQ_PROPERTIES:
        props.pop(key, None)
    metadata: dict[str, Any] = {}
    if isinstance(meta_text, str):
        with contextlib.suppress(ValueError):
            loaded = json.loads(meta_text)
            if isinstance(loaded, dict):
                metadata.update(loaded)
    try:
        message_type = MessageType.coerce(type_name) if type_name else MessageType.EVENT
    except MessagingError:
        message_type = MessageType.EVENT
    try:
        prio = MessagePriority.coerce(priority) if priority is not None else None
    except MessagingError:
        prio = None
    enqueued = sb_message.enqueued_time_utc
    locked = None if dead else sb_message.locked_until_utc
    count = sb_message.delivery_count
    system = {
        key: value
        for key, value in {
            "subject": str_or_none(sb_message.subject),
            "content_type": str_or_none(sb_message.content_type),
            "to": str_or_none(sb_message.to),
            "session_id": str_or_none(sb_message.session_id),
        }.items()
        if value is not None
    }
    token = None if dead else str_or_none(sb_message.lock_token)
    info: dict[str, Any] = {
        "properties": props,
        "system": system,
        "topic": topic,
        "subscription": sub,
        "lock_token": token,
        "delivery_id": str_or_none(sb_message.sequence_number),
        "delivery_count": (int(count) + 1) if count is not None else None,
        "enqueued_at": enqueued.timestamp() if isinstance(enqueued, datetime) else None,
        "locked_until": locked.timestamp() if isinstance(locked, datetime) else None,
    }
    if dead:
        info["dead_letter_reason"] = sb_message.dead_letter_reason
        info["dead_letter_error_description"] = sb_message.dead_letter_error_description
        metadata[DLQ_REASON] = sb_message.dead_letter_reason
        metadata[DLQ_ERROR] = sb_message.dead_letter_error_description
    metadata[SERVICEBUS_KEY] = info
    ttl = sb_message.time_to_live
    ttl_seconds: int | None = None
    if isinstance(ttl, timedelta) and timedelta(0) < ttl < NEVER:
        ttl_seconds = max(1, math.ceil(ttl.total_seconds()))
    return Message(
        message_id=str_or_none(sb_message.message_id) or new_message_id(),
        message_type=message_type,
        sender_id=sender if isinstance(sender, str) and sender else "anonymous",
        recipient_id=system.get("to"),
        content=content_of(sb_message),
        timestamp=enqueued if isinstance(enqueued, datetime) else datetime.now(UTC),
        priority=prio or MessagePriority.NORMAL,
        metadata=metadata,
        correlation_id=str_or_none(sb_message.correlation_id),
        reply_to=str_or_none(sb_message.reply_to),
        ttl=ttl_seconds,
    )
