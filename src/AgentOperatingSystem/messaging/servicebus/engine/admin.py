"""Entity administration on our engines: topics, subscriptions and rules written to the
:class:`~.catalog.EntityCatalog`, and a subscription's queue deleted with it."""

from __future__ import annotations

from collections.abc import Callable

from ...brokers.base import Broker
from ...errors import EntityExistsError, EntityNotFoundError
from ..entities import (
    DEFAULT_RULE_NAME,
    RuleProperties,
    SubscriptionProperties,
    SubscriptionRuntimeProperties,
    TopicProperties,
    TopicRuntimeProperties,
    subscription_queue,
)
from ..sqlfilter import Filter
from .catalog import (
    EntityCatalog,
    dumps,
    filter_record,
    rules_key,
    sub_key,
    subs_key,
    topic_key,
    topic_props,
    topics_key,
)
from .ledger import SizeLedger

__all__ = ["EngineAdmin"]


class EngineAdmin:
    """The :class:`~..backend.EntityAdmin` of :class:`~.service.EngineServiceBus`.

    ``forget_queue`` is called with a deleted subscription's queue, so the facade drops the
    locks it holds there.
    """

    def __init__(
        self,
        catalog: EntityCatalog,
        broker: Callable[[], Broker],
        ledger: SizeLedger,
        forget_queue: Callable[[str], None],
    ) -> None:
        self._catalog = catalog
        self._broker = broker
        self._ledger = ledger
        self._forget_queue = forget_queue

    # -------------------------------------------------------------- topics

    async def create_topic(self, props: TopicProperties) -> TopicProperties:
        """Create a topic."""
        name = props.name
        catalog = self._catalog
        if await catalog.record(topic_key(name)) is not None:
            raise EntityExistsError(f"topic {name!r} already exists")
        await catalog.write(
            topic_key(name),
            {
                "max_size_in_mb": props.max_size_in_mb,
                "default_message_ttl_seconds": props.default_message_ttl_seconds,
                "requires_duplicate_detection": props.requires_duplicate_detection,
                "duplicate_detection_window_seconds": props.duplicate_detection_window_seconds,
            },
        )
        await self._broker().bind(topics_key(), name)
        catalog.invalidate(name)
        return props

    async def get_topic(self, topic_name: str) -> TopicProperties:
        """A topic's settings."""
        return (await self._catalog.state(topic_name, fresh=True)).props

    async def list_topics(self) -> list[TopicProperties]:
        """Every topic, by name."""
        out: list[TopicProperties] = []
        for name in sorted(await self._broker().bindings(topics_key())):
            record = await self._catalog.record(topic_key(name))
            if record is not None:
                out.append(topic_props(name, record))
        return out

    async def delete_topic(self, topic_name: str) -> None:
        """Delete a topic, its subscriptions and their messages."""
        catalog = self._catalog
        state = await catalog.state(topic_name, fresh=True)
        for sub in list(state.subs):
            await self._drop_subscription(topic_name, sub)
        await catalog.erase(subs_key(topic_name))
        await catalog.erase(topic_key(topic_name))
        await self._broker().unbind(topics_key(), topic_name)
        catalog.invalidate(topic_name)

    async def get_topic_runtime_properties(self, topic_name: str) -> TopicRuntimeProperties:
        """The topic's counted size and its number of subscriptions."""
        state = await self._catalog.state(topic_name, fresh=True)
        size = sum(self._ledger.bytes(s.queue) for s in state.subs.values())
        return TopicRuntimeProperties(topic_name, size, len(state.subs))

    # -------------------------------------------------------------- subscriptions

    async def create_subscription(
        self, props: SubscriptionProperties, default_filter: Filter
    ) -> SubscriptionProperties:
        """Create a subscription with its ``$Default`` rule."""
        topic, name = props.topic_name, props.name
        catalog = self._catalog
        await catalog.state(topic, fresh=True)
        if await catalog.record(sub_key(topic, name)) is not None:
            raise EntityExistsError(f"subscription {name!r} of topic {topic!r} already exists")
        catalog.compiled(filter_record(DEFAULT_RULE_NAME, default_filter))
        await catalog.erase(rules_key(topic, name))
        await self._broker().bind(
            rules_key(topic, name), dumps(filter_record(DEFAULT_RULE_NAME, default_filter))
        )
        await catalog.write(
            sub_key(topic, name),
            {
                "max_delivery_count": props.max_delivery_count,
                "lock_duration": props.lock_duration,
                "dead_lettering_on_message_expiration": props.dead_lettering_on_message_expiration,
                "default_message_ttl_seconds": props.default_message_ttl_seconds,
            },
        )
        await self._broker().bind(subs_key(topic), name)
        catalog.invalidate(topic)
        return props

    async def get_subscription(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionProperties:
        """A subscription's settings."""
        return (await self._catalog.subscription(topic_name, subscription_name, fresh=True)).props

    async def list_subscriptions(self, topic_name: str) -> list[SubscriptionProperties]:
        """The topic's subscriptions, by name."""
        state = await self._catalog.state(topic_name, fresh=True)
        return [state.subs[name].props for name in sorted(state.subs)]

    async def _drop_subscription(self, topic: str, sub: str) -> None:
        queue = subscription_queue(topic, sub)
        await self._broker().unbind(subs_key(topic), sub)
        await self._broker().delete_queue(queue)
        await self._catalog.erase(rules_key(topic, sub))
        await self._catalog.erase(sub_key(topic, sub))
        self._ledger.drop(queue)
        self._forget_queue(queue)

    async def delete_subscription(self, topic_name: str, subscription_name: str) -> None:
        """Delete a subscription and its messages (dead letters too)."""
        await self._catalog.subscription(topic_name, subscription_name, fresh=True)
        await self._drop_subscription(topic_name, subscription_name)
        self._catalog.invalidate(topic_name)

    async def get_subscription_runtime_properties(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionRuntimeProperties:
        """Live and dead-lettered message counts."""
        sub = await self._catalog.subscription(topic_name, subscription_name)
        return SubscriptionRuntimeProperties(
            topic_name,
            subscription_name,
            await self._broker().depth(sub.queue),
            await self._broker().dead_letter_depth(sub.queue),
        )

    # -------------------------------------------------------------- rules

    async def add_rule(
        self, topic_name: str, subscription_name: str, rule_name: str, rule_filter: Filter
    ) -> RuleProperties:
        """Add a rule; its filter is compiled now."""
        catalog = self._catalog
        await catalog.subscription(topic_name, subscription_name, fresh=True)
        key = rules_key(topic_name, subscription_name)
        if any(r.get("name") == rule_name for r in await catalog.records(key)):
            raise EntityExistsError(
                f"rule {rule_name!r} of subscription {subscription_name!r} already exists"
            )
        record = filter_record(rule_name, rule_filter)
        catalog.compiled(record)
        await self._broker().bind(key, dumps(record))
        catalog.invalidate(topic_name)
        return RuleProperties(rule_name, rule_filter)

    async def remove_rule(self, topic_name: str, subscription_name: str, rule_name: str) -> None:
        """Remove a rule (a subscription without rules receives nothing)."""
        catalog = self._catalog
        await catalog.subscription(topic_name, subscription_name, fresh=True)
        key = rules_key(topic_name, subscription_name)
        found = [r for r in await catalog.records(key) if r.get("name") == rule_name]
        if not found:
            raise EntityNotFoundError(
                f"rule {rule_name!r} of subscription {subscription_name!r} does not exist"
            )
        for record in found:
            await self._broker().unbind(key, record["_text"])
        catalog.invalidate(topic_name)

    async def list_rules(self, topic_name: str, subscription_name: str) -> list[RuleProperties]:
        """The subscription's rules, by name."""
        sub = await self._catalog.subscription(topic_name, subscription_name, fresh=True)
        return [RuleProperties(name, f) for name, f in sub.rules]
