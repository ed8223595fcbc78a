"""Service Bus's entities and the backend seam: what the manager asks of an engine backend
and of the Azure backend alike, and the properties both return."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping, Protocol, Union, runtime_checkable

from ..errors import (
    ConfigurationError,
)
from ..types import Message
from .sqlfilter import Filter

__all__ = [
    "DEFAULT_RULE_NAME",
    "REASON_EXPIRED",
    "REASON_MAX_DELIVERY",
    "REASON_UNDECODABLE",
    "SERVICEBUS_KEY",
    "OutgoingMessage",
    "RuleProperties",
    "ServiceBusBackend",
    "SubscriptionProperties",
    "SubscriptionRuntimeProperties",
    "TopicProperties",
    "TopicRuntimeProperties",
    "application_properties",
    "is_azure_connection_string",
    "servicebus_info",
    "subscription_queue",
]

log = logging.getLogger("aos.messaging.servicebus")

DEFAULT_RULE_NAME = "$Default"
"""Name of the rule every subscription is created with (as on Azure)."""

SERVICEBUS_KEY = "aos.servicebus"
"""``Message.metadata`` key holding the Service Bus details of a sent or received message."""


#: Dead-letter reasons, spelled as Azure Service Bus spells them.
REASON_MAX_DELIVERY = "MaxDeliveryCountExceeded"
REASON_EXPIRED = "TTLExpiredException"
REASON_UNDECODABLE = "UndecodableMessage"

_MIB = 1024 * 1024
_TOPIC_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,258}[A-Za-z0-9])?$")
_SUB_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,48}[A-Za-z0-9])?$")
_RULE_RE = re.compile(r"^(?:\$Default|[A-Za-z0-9](?:[A-Za-z0-9._-]{0,48}[A-Za-z0-9])?)$")
_SYSTEM_KEYS = ("subject", "content_type", "to", "session_id")

Scalar = Union[str, int, float, bool]
Duration = Union[int, float, timedelta]


# ------------------------------------------------------------------------------- data types


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
    """A topic's current size (as counted, see the module docstring) and subscriptions."""

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


# ------------------------------------------------------------------------------- validation


def _check_name(kind: str, value: object, pattern: re.Pattern[str], limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{kind} must be a non-empty string, not {value!r}")
    if len(value) > limit or not pattern.match(value):
        raise ConfigurationError(
            f"invalid {kind} {value!r}: up to {limit} letters, digits, '.', '-', '_'"
            + (" or '/'" if kind == "topic_name" else "")
            + ", starting and ending with a letter or digit"
        )
    return value


def _topic(value: object) -> str:
    return _check_name("topic_name", value, _TOPIC_RE, 260)


def _sub(value: object) -> str:
    return _check_name("subscription_name", value, _SUB_RE, 50)


def _rule(value: object) -> str:
    return _check_name("rule_name", value, _RULE_RE, 50)


def _seconds(name: str, value: object, *, allow_none: bool) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise ConfigurationError(f"{name} is required")
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _is_scalar(value: object) -> bool:
    if isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    return False


def _promoted(content: Mapping[str, Any]) -> dict[str, Scalar]:
    """The user properties a message's content gives: its scalar top-level fields."""
    return {k: v for k, v in content.items() if isinstance(k, str) and _is_scalar(v)}


def _min_ttl(*values: float | None) -> float | None:
    given = [v for v in values if v is not None]
    return min(given) if given else None


# ------------------------------------------------------------------------------- backend seam


@runtime_checkable
class ServiceBusBackend(Protocol):
    """What :class:`ServiceBusManager` delegates to: our engines (:class:`EngineServiceBus`)
    or Azure (:class:`~.azure_servicebus.AzureServiceBus`). Names are validated by the
    manager; backends translate their library's errors into ours."""

    kind: str

    async def start(self) -> None:
        """Connect."""
        ...

    async def close(self) -> None:
        """Release everything; wake receivers that wait."""
        ...

    async def create_topic(self, props: TopicProperties) -> TopicProperties:
        """Create a topic (:class:`EntityExistsError` when it exists)."""
        ...

    async def get_topic(self, topic_name: str) -> TopicProperties:
        """A topic's settings (:class:`EntityNotFoundError`)."""
        ...

    async def list_topics(self) -> list[TopicProperties]:
        """Every topic."""
        ...

    async def delete_topic(self, topic_name: str) -> None:
        """Delete a topic with its subscriptions and their messages."""
        ...

    async def get_topic_runtime_properties(self, topic_name: str) -> TopicRuntimeProperties:
        """A topic's size and subscription count."""
        ...

    async def create_subscription(
        self, props: SubscriptionProperties, default_filter: Filter
    ) -> SubscriptionProperties:
        """Create a subscription whose ``$Default`` rule has ``default_filter``."""
        ...

    async def get_subscription(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionProperties:
        """A subscription's settings."""
        ...

    async def list_subscriptions(self, topic_name: str) -> list[SubscriptionProperties]:
        """A topic's subscriptions."""
        ...

    async def delete_subscription(self, topic_name: str, subscription_name: str) -> None:
        """Delete a subscription and its messages."""
        ...

    async def get_subscription_runtime_properties(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionRuntimeProperties:
        """A subscription's message counts."""
        ...

    async def add_rule(
        self, topic_name: str, subscription_name: str, rule_name: str, rule_filter: Filter
    ) -> RuleProperties:
        """Add a rule."""
        ...

    async def remove_rule(self, topic_name: str, subscription_name: str, rule_name: str) -> None:
        """Remove a rule."""
        ...

    async def list_rules(self, topic_name: str, subscription_name: str) -> list[RuleProperties]:
        """A subscription's rules."""
        ...

    async def send(self, topic_name: str, outgoing: OutgoingMessage) -> None:
        """Send one message to a topic."""
        ...

    async def receive(
        self, topic_name: str, subscription_name: str, max_count: int, timeout: float | None
    ) -> list[Message]:
        """Lock and return up to ``max_count`` messages; wait up to ``timeout`` seconds
        (None: until one comes or the backend closes) for the first; [] when none came."""
        ...

    async def complete(self, message: Message) -> None:
        """Settle a received message as done."""
        ...

    async def abandon(self, message: Message) -> None:
        """Give a received message back (redelivered, or dead-lettered after
        ``max_delivery_count`` deliveries)."""
        ...

    async def dead_letter(
        self, message: Message, reason: str | None, error_description: str | None
    ) -> None:
        """Move a received message to its subscription's dead-letter queue."""
        ...

    async def renew_lock(self, message: Message) -> datetime:
        """Extend a received message's lock; return the new expiry."""
        ...

    async def dead_letters(
        self, topic_name: str, subscription_name: str, max_count: int
    ) -> list[Message]:
        """Read (without removing) a subscription's dead letters, oldest first."""
        ...

    async def resubmit(self, message: Message) -> None:
        """Put a dead letter back into circulation."""
        ...

    async def purge_dead_letters(self, topic_name: str, subscription_name: str) -> int:
        """Delete a subscription's dead letters."""
        ...


# ------------------------------------------------------------------------------- our engines
