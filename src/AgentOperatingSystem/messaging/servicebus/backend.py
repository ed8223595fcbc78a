"""The backend seam: what :class:`~.manager.ServiceBusManager` asks of an engine backend
and of the Azure backend alike, in three parts (entity administration, dead-letter reads and
the messages themselves)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from ..types import Message
from .entities import (
    OutgoingMessage,
    RuleProperties,
    SubscriptionProperties,
    SubscriptionRuntimeProperties,
    TopicProperties,
    TopicRuntimeProperties,
)
from .sqlfilter import Filter

__all__ = ["DeadLetterStore", "EntityAdmin", "ServiceBusBackend"]


@runtime_checkable
class EntityAdmin(Protocol):
    """Topics, subscriptions and rules: create, read, list, delete, and their counts."""

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


@runtime_checkable
class DeadLetterStore(Protocol):
    """A subscription's dead-letter queue: read, resubmit, purge."""

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


@runtime_checkable
class ServiceBusBackend(EntityAdmin, DeadLetterStore, Protocol):
    """What :class:`~.manager.ServiceBusManager` delegates to: our engines
    (:class:`~.engine.EngineServiceBus`) or Azure (:class:`~.azure.AzureServiceBus`): the
    entity administration of :class:`EntityAdmin`, the dead-letter reads of
    :class:`DeadLetterStore`, and the messages themselves (send, peek-lock receive, settle).
    Names are validated by the manager; backends translate their library's errors into
    ours."""

    kind: str

    async def start(self) -> None:
        """Connect."""
        ...

    async def close(self) -> None:
        """Release everything; wake receivers that wait."""
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
