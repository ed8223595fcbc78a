"""Message structures: :class:`Message`, :class:`MessageType`, :class:`MessagePriority`.

These are the spec's section 3.2 types. Every field has a default so a message can be built
from keywords alone; ``message_id`` defaults to a new random id and ``timestamp`` to an aware
UTC now. Strings are accepted for the enums (``"task"``, ``"HIGH"``) and converted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Dict, Optional

from .errors import InvalidMessageError

__all__ = [
    "BROADCAST_TYPES",
    "MESSAGE_FIELDS",
    "REQUEST_TYPES",
    "DeliveryMode",
    "Message",
    "MessagePriority",
    "MessageType",
    "new_message_id",
    "utc_now",
]


def new_message_id() -> str:
    """Return a new random message id (128 random bits, hex)."""
    return os.urandom(16).hex()


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class MessageType(Enum):
    """What a message is for."""

    TASK = "task"  # Task assignment
    QUERY = "query"  # Information request
    RESPONSE = "response"  # Response to query
    EVENT = "event"  # Event notification
    COMMAND = "command"  # Direct command
    STATUS = "status"  # Status update
    NOTIFICATION = "notification"  # General notification
    ERROR = "error"  # Error message

    @classmethod
    def coerce(cls, value: MessageType | str) -> MessageType:
        """Accept a member, its value (``"task"``) or its name (``"TASK"``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        raise InvalidMessageError(
            f"unknown message type {value!r}; expected one of {[m.value for m in cls]}"
        )


class MessagePriority(Enum):
    """Delivery priority: ``CRITICAL`` (0) is served first, FIFO within one priority."""

    CRITICAL = 0  # Immediate processing
    HIGH = 1  # High priority
    NORMAL = 2  # Normal priority
    LOW = 3  # Low priority
    BACKGROUND = 4  # Background processing

    @classmethod
    def coerce(cls, value: MessagePriority | int | str) -> MessagePriority:
        """Accept a member, its number (0-4) or its name (``"HIGH"``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        raise InvalidMessageError(
            f"unknown priority {value!r}; expected 0-4 or one of {[m.name for m in cls]}"
        )


class DeliveryMode(str, Enum):
    """How hard the bus works to deliver a message (spec section 5)."""

    AT_LEAST_ONCE = "at_least_once"
    AT_MOST_ONCE = "at_most_once"
    EXACTLY_ONCE = "exactly_once"

    @classmethod
    def coerce(cls, value: DeliveryMode | str) -> DeliveryMode:
        """Accept a member or its value."""
        try:
            return cls(value)
        except ValueError:
            raise InvalidMessageError(
                f"unknown delivery_mode {value!r}; expected one of {[m.value for m in cls]}"
            ) from None


@dataclass(slots=True, eq=True)
class Message:
    """One message between agents (spec section 3.2).

    ``recipient_id`` is ``None`` for a message that is routed or fanned out (events).
    ``ttl`` is in seconds; ``metadata`` keys starting with ``aos.`` are reserved for the bus
    (signatures, dead-letter information, trace context).
    """

    message_id: str = field(default_factory=new_message_id)
    message_type: MessageType = MessageType.NOTIFICATION
    sender_id: str = "anonymous"
    recipient_id: Optional[str] = None
    content: Dict[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=utc_now)
    priority: MessagePriority = MessagePriority.NORMAL
    metadata: Dict[str, Any] = field(default_factory=dict)
    correlation_id: Optional[str] = None
    reply_to: Optional[str] = None
    ttl: Optional[int] = None

    def __post_init__(self) -> None:
        if type(self.message_type) is not MessageType:
            self.message_type = MessageType.coerce(self.message_type)
        if type(self.priority) is not MessagePriority:
            self.priority = MessagePriority.coerce(self.priority)
        if not isinstance(self.message_id, str) or not self.message_id:
            raise InvalidMessageError("message_id must be a non-empty string")
        if not isinstance(self.sender_id, str) or not self.sender_id:
            raise InvalidMessageError("sender_id must be a non-empty string")
        if self.recipient_id is not None and (
            not isinstance(self.recipient_id, str) or not self.recipient_id
        ):
            raise InvalidMessageError("recipient_id must be a non-empty string or None")
        if not isinstance(self.content, dict):
            raise InvalidMessageError(f"content must be a dict, not {type(self.content).__name__}")
        if not isinstance(self.metadata, dict):
            raise InvalidMessageError(
                f"metadata must be a dict, not {type(self.metadata).__name__}"
            )
        if not isinstance(self.timestamp, datetime):
            raise InvalidMessageError("timestamp must be a datetime")
        if self.timestamp.tzinfo is None:
            # A naive datetime is taken as local time, as datetime.now() gives it.
            self.timestamp = self.timestamp.astimezone(UTC)
        for name in ("correlation_id", "reply_to"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidMessageError(f"{name} must be a string or None")
        for name in ("message_id", "sender_id", "recipient_id", "correlation_id", "reply_to"):
            value = getattr(self, name)
            if value is not None and not value.isascii():
                try:
                    value.encode()
                except UnicodeEncodeError:
                    raise InvalidMessageError(
                        f"{name} is not valid text (it holds a lone surrogate)"
                    ) from None
        if self.ttl is not None and (
            isinstance(self.ttl, bool) or not isinstance(self.ttl, (int, float)) or self.ttl <= 0
        ):
            raise InvalidMessageError("ttl must be a positive number of seconds or None")

    def copy(self, **changes: Any) -> Message:
        """A copy (``content`` and ``metadata`` copied shallowly) with ``changes`` applied."""
        fields: Dict[str, Any] = {
            "message_id": self.message_id,
            "message_type": self.message_type,
            "sender_id": self.sender_id,
            "recipient_id": self.recipient_id,
            "content": dict(self.content),
            "timestamp": self.timestamp,
            "priority": self.priority,
            "metadata": dict(self.metadata),
            "correlation_id": self.correlation_id,
            "reply_to": self.reply_to,
            "ttl": self.ttl,
        }
        fields.update(changes)
        return Message(**fields)


#: Message types that fan out to every subscribed agent when they name no recipient.
BROADCAST_TYPES = frozenset({MessageType.EVENT, MessageType.NOTIFICATION, MessageType.STATUS})
#: Message types whose handler return value becomes the RESPONSE when they carry ``reply_to``.
REQUEST_TYPES = frozenset({MessageType.QUERY, MessageType.TASK, MessageType.COMMAND})

#: The Message fields ``publish()`` accepts as keywords (also the admin API's send/request).
MESSAGE_FIELDS = (
    "message_type",
    "content",
    "recipient_id",
    "sender_id",
    "priority",
    "metadata",
    "correlation_id",
    "reply_to",
    "ttl",
    "message_id",
)
