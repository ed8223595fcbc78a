"""Service Bus's entities as every backend returns them (topic, subscription and rule
properties, runtime counts), the message on its way to a topic, and the helpers that read the
Service Bus details a message carries in its metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping, Union

from ..types import Message
from .sqlfilter import Filter

__all__ = [
    "DEFAULT_RULE_NAME",
    "MIB",
    "REASON_EXPIRED",
    "REASON_MAX_DELIVERY",
    "REASON_UNDECODABLE",
    "SERVICEBUS_KEY",
    "Duration",
    "OutgoingMessage",
    "RuleProperties",
    "Scalar",
    "SubscriptionProperties",
    "SubscriptionRuntimeProperties",
    "TopicProperties",
    "TopicRuntimeProperties",
    "application_properties",
    "is_azure_connection_string",
    "is_scalar",
    "promoted_properties",
    "servicebus_info",
    "subscription_queue",
]

DEFAULT_RULE_NAME = "$Default"
"""Name of the rule every subscription is created with (as on Azure)."""

SERVICEBUS_KEY = "aos.servicebus"
"""``Message.metadata`` key holding the Service Bus details of a sent or received message."""

#: Dead-letter reasons, spelled as Azure Service Bus spells them.
REASON_MAX_DELIVERY = "MaxDeliveryCountExceeded"
REASON_EXPIRED = "TTLExpiredException"
REASON_UNDECODABLE = "UndecodableMessage"

MIB = 1024 * 1024
"""Bytes in a megabyte, as ``max_size_in_mb`` counts them."""

Scalar = Union[str, int, float, bool]
"""The type of a user (application) property value."""

Duration = Union[int, float, timedelta]
"""Seconds, or a :class:`~datetime.timedelta`."""


@dataclass(frozen=True, slots=True)
class TopicProperties:
    """A topic's settings. ``max_size_in_mb`` bounds the bytes of its live messages."""

    name: str
    max_size_in_mb: float = 1024
    default_message_ttl_seconds: float | None = None
    requires_duplicate_detection: bool = False
    duplicate_detection_window_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class SubscriptionProperties:
    """A subscription's settings (Azure's defaults except dead-lettering on expiry)."""

    topic_name: str
    name: str
    max_delivery_count: int = 10
    lock_duration: float = 60.0
    dead_lettering_on_message_expiration: bool = True
    default_message_ttl_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class RuleProperties:
    """A subscription rule: a name and a filter."""

    name: str
    filter: Filter


@dataclass(frozen=True, slots=True)
class TopicRuntimeProperties:
    """A topic's current size (as counted, see :mod:`.engine`) and subscriptions."""

    name: str
    size_in_bytes: int
    subscription_count: int


@dataclass(frozen=True, slots=True)
class SubscriptionRuntimeProperties:
    """How many messages a subscription holds (live: available, scheduled or locked) and
    how many are in its dead-letter queue."""

    topic_name: str
    name: str
    message_count: int
    dead_letter_message_count: int


@dataclass(slots=True)
class OutgoingMessage:
    """A message on its way to a topic, as the manager hands it to a backend.

    ``message.content`` is the body; ``properties`` are the user (application) properties and
    ``system`` the system properties (``message_id``, ``correlation_id``, ``reply_to``, ``to``,
    ``subject``, ``content_type``, ``session_id``) that filters see.
    """

    message: Message
    properties: dict[str, Scalar]
    system: dict[str, str]
    time_to_live: float | None = None
    scheduled_enqueue_time: datetime | None = None


def application_properties(message: Message) -> dict[str, Any]:
    """The user properties a received (or sent) message carries."""
    info = message.metadata.get(SERVICEBUS_KEY)
    props = info.get("properties") if isinstance(info, dict) else None
    return dict(props) if isinstance(props, dict) else {}


def servicebus_info(message: Message) -> dict[str, Any]:
    """The Service Bus details of a received message (a copy): topic, subscription,
    lock_token, delivery_count, enqueued_at, locked_until, properties, system, ..."""
    info = message.metadata.get(SERVICEBUS_KEY)
    return dict(info) if isinstance(info, dict) else {}


def subscription_queue(topic_name: str, subscription_name: str) -> str:
    """The broker queue that holds a subscription's messages on our engines."""
    return f"_sb/{topic_name}/subscriptions/{subscription_name}"


def is_azure_connection_string(value: str) -> bool:
    """True for an Azure Service Bus connection string (``Endpoint=sb://...;...``)."""
    for part in value.split(";"):
        key, sep, rest = part.partition("=")
        if sep and key.strip().lower() == "endpoint" and rest.strip().lower().startswith("sb://"):
            return True
    return False


def is_scalar(value: object) -> bool:
    """Whether ``value`` can be a user property: a str, a bool, a 64-bit int or a finite
    float."""
    if isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    return False


def promoted_properties(content: Mapping[str, Any]) -> dict[str, Scalar]:
    """The user properties a message's content gives: its scalar top-level fields."""
    return {k: v for k, v in content.items() if isinstance(k, str) and is_scalar(v)}
