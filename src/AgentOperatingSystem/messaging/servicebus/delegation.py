"""The forwarding half of a backend facade, written once for every backend.

A backend (:class:`~.engine.EngineServiceBus`, :class:`~.azure.AzureServiceBus`) keeps its
hot paths (send, receive, settle) in its own class and owns two collaborators for the rest:
an :class:`~.backend.EntityAdmin` (topics, subscriptions, rules) and a
:class:`~.backend.DeadLetterStore`. :class:`DelegatingBackend` forwards those calls to them,
so neither facade writes the same sixteen one-line methods again; :class:`Forwarded` is a
setting of the facade that one of its collaborators keeps.
"""

from __future__ import annotations

from typing import TypeVar

from ...config.forwarding import Forwarded
from ..types import Message
from .backend import DeadLetterStore, EntityAdmin
from .entities import (
    RuleProperties,
    SubscriptionProperties,
    SubscriptionRuntimeProperties,
    TopicProperties,
    TopicRuntimeProperties,
)
from .sqlfilter import Filter

__all__ = ["DelegatingBackend", "Forwarded"]  # Forwarded: from config.forwarding

T = TypeVar("T")


class DelegatingBackend:
    """Forwards entity administration to ``_admin`` and dead-letter reads to ``_dlq``,
    which the subclass sets in its ``__init__``."""

    _admin: EntityAdmin
    _dlq: DeadLetterStore

    # -------------------------------------------------------------- topics

    async def create_topic(self, props: TopicProperties) -> TopicProperties:
        """Create a topic (:class:`EntityExistsError` when it exists)."""
        return await self._admin.create_topic(props)

    async def get_topic(self, topic_name: str) -> TopicProperties:
        """A topic's settings (:class:`EntityNotFoundError`)."""
        return await self._admin.get_topic(topic_name)

    async def list_topics(self) -> list[TopicProperties]:
        """Every topic, by name."""
        return await self._admin.list_topics()

    async def delete_topic(self, topic_name: str) -> None:
        """Delete a topic with its subscriptions and their messages."""
        await self._admin.delete_topic(topic_name)

    async def get_topic_runtime_properties(self, topic_name: str) -> TopicRuntimeProperties:
        """A topic's size and subscription count."""
        return await self._admin.get_topic_runtime_properties(topic_name)

    # -------------------------------------------------------------- subscriptions

    async def create_subscription(
        self, props: SubscriptionProperties, default_filter: Filter
    ) -> SubscriptionProperties:
        """Create a subscription whose ``$Default`` rule has ``default_filter``."""
        return await self._admin.create_subscription(props, default_filter)

    async def get_subscription(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionProperties:
        """A subscription's settings."""
        return await self._admin.get_subscription(topic_name, subscription_name)

    async def list_subscriptions(self, topic_name: str) -> list[SubscriptionProperties]:
        """A topic's subscriptions, by name."""
        return await self._admin.list_subscriptions(topic_name)

    async def delete_subscription(self, topic_name: str, subscription_name: str) -> None:
        """Delete a subscription and its messages (dead letters too)."""
        await self._admin.delete_subscription(topic_name, subscription_name)

    async def get_subscription_runtime_properties(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionRuntimeProperties:
        """Live and dead-lettered message counts."""
        return await self._admin.get_subscription_runtime_properties(topic_name, subscription_name)

    # -------------------------------------------------------------- rules

    async def add_rule(
        self, topic_name: str, subscription_name: str, rule_name: str, rule_filter: Filter
    ) -> RuleProperties:
        """Add a rule."""
        return await self._admin.add_rule(topic_name, subscription_name, rule_name, rule_filter)

    async def remove_rule(self, topic_name: str, subscription_name: str, rule_name: str) -> None:
        """Remove a rule."""
        await self._admin.remove_rule(topic_name, subscription_name, rule_name)

    async def list_rules(self, topic_name: str, subscription_name: str) -> list[RuleProperties]:
        """A subscription's rules, by name."""
        return await self._admin.list_rules(topic_name, subscription_name)

    # -------------------------------------------------------------- dead letters

    async def dead_letters(
        self, topic_name: str, subscription_name: str, max_count: int
    ) -> list[Message]:
        """Read (without removing) a subscription's dead letters, oldest first."""
        return await self._dlq.dead_letters(topic_name, subscription_name, max_count)

    async def resubmit(self, message: Message) -> None:
        """Put a dead letter back into circulation."""
        await self._dlq.resubmit(message)

    async def purge_dead_letters(self, topic_name: str, subscription_name: str) -> int:
        """Delete a subscription's dead letters; return how many."""
        return await self._dlq.purge_dead_letters(topic_name, subscription_name)
