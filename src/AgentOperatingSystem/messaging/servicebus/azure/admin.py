"""Entity administration on Azure: topics, subscriptions and rules through the SDK's
``ServiceBusAdministrationClient``.

A subscription's filter: the subscription is created, its automatic ``$Default`` rule
(``TrueFilter``) is deleted and a ``$Default`` rule with the filter is created; if that
fails the new subscription is deleted again. ``max_size_in_mb`` must be a whole number of
megabytes (Azure accepts 1024-5120 on the Standard tier, up to 81920 on Premium).
"""

from __future__ import annotations

import contextlib
from typing import Any

from ...errors import ConfigurationError
from ..entities import (
    DEFAULT_RULE_NAME,
    RuleProperties,
    SubscriptionProperties,
    SubscriptionRuntimeProperties,
    TopicProperties,
    TopicRuntimeProperties,
)
from ..sqlfilter import Filter, TrueFilter
from .connection import AzureConnection
from .convert import duration, seconds_of
from .filters import from_azure_filter, to_azure_filter
from .translate import azure_errors

__all__ = ["AzureAdmin"]


def _topic(value: Any) -> TopicProperties:
    size = value.max_size_in_megabytes
    window = seconds_of(value.duplicate_detection_history_time_window)
    return TopicProperties(
        name=str(value.name),
        max_size_in_mb=float(size) if size is not None else 1024.0,
        default_message_ttl_seconds=seconds_of(value.default_message_time_to_live),
        requires_duplicate_detection=bool(value.requires_duplicate_detection),
        duplicate_detection_window_seconds=window if window is not None else 600.0,
    )


def _subscription(topic_name: str, value: Any) -> SubscriptionProperties:
    lock = seconds_of(value.lock_duration)
    count = value.max_delivery_count
    return SubscriptionProperties(
        topic_name=topic_name,
        name=str(value.name),
        max_delivery_count=int(count) if count is not None else 10,
        lock_duration=lock if lock is not None else 60.0,
        dead_lettering_on_message_expiration=bool(value.dead_lettering_on_message_expiration),
        default_message_ttl_seconds=seconds_of(value.default_message_time_to_live),
    )


class AzureAdmin:
    """The :class:`~..backend.EntityAdmin` of :class:`~.service.AzureServiceBus`."""

    def __init__(self, connection: AzureConnection) -> None:
        self._conn = connection

    # -------------------------------------------------------------- topics

    async def create_topic(self, props: TopicProperties) -> TopicProperties:
        """``create_topic`` on the administration client."""
        self._conn.check()
        if props.max_size_in_mb != int(props.max_size_in_mb):
            raise ConfigurationError("on Azure, max_size_in_mb must be a whole number of MB")
        kwargs: dict[str, Any] = {"max_size_in_megabytes": int(props.max_size_in_mb)}
        if props.default_message_ttl_seconds is not None:
            kwargs["default_message_time_to_live"] = duration(props.default_message_ttl_seconds)
        if props.requires_duplicate_detection:
            kwargs["requires_duplicate_detection"] = True
            kwargs["duplicate_detection_history_time_window"] = duration(
                props.duplicate_detection_window_seconds
            )
        with azure_errors(f"create topic {props.name!r}"):
            created = await self._conn.admin.create_topic(props.name, **kwargs)
        return _topic(created)

    async def get_topic(self, topic_name: str) -> TopicProperties:
        """``get_topic``."""
        self._conn.check()
        with azure_errors(f"topic {topic_name!r}"):
            return _topic(await self._conn.admin.get_topic(topic_name))

    async def list_topics(self) -> list[TopicProperties]:
        """``list_topics``, by name."""
        self._conn.check()
        out: list[TopicProperties] = []
        with azure_errors("list topics"):
            async for item in self._conn.admin.list_topics():
                out.append(_topic(item))
        return sorted(out, key=lambda t: t.name)

    async def delete_topic(self, topic_name: str) -> None:
        """``delete_topic`` (Azure deletes its subscriptions and messages)."""
        self._conn.check()
        await self._conn.drop_handlers(topic_name, None)
        with azure_errors(f"delete topic {topic_name!r}"):
            await self._conn.admin.delete_topic(topic_name)

    async def get_topic_runtime_properties(self, topic_name: str) -> TopicRuntimeProperties:
        """``get_topic_runtime_properties``: Azure's own size in bytes."""
        self._conn.check()
        with azure_errors(f"topic {topic_name!r}"):
            info = await self._conn.admin.get_topic_runtime_properties(topic_name)
        return TopicRuntimeProperties(
            topic_name, int(info.size_in_bytes or 0), int(info.subscription_count or 0)
        )

    # -------------------------------------------------------------- subscriptions

    async def create_subscription(
        self, props: SubscriptionProperties, default_filter: Filter
    ) -> SubscriptionProperties:
        """``create_subscription``; a filter replaces the automatic ``$Default`` rule."""
        self._conn.check()
        topic, name = props.topic_name, props.name
        kwargs: dict[str, Any] = {
            "max_delivery_count": props.max_delivery_count,
            "lock_duration": duration(props.lock_duration),
            "dead_lettering_on_message_expiration": props.dead_lettering_on_message_expiration,
        }
        if props.default_message_ttl_seconds is not None:
            kwargs["default_message_time_to_live"] = duration(props.default_message_ttl_seconds)
        with azure_errors(f"create subscription {topic}/{name}"):
            created = await self._conn.admin.create_subscription(topic, name, **kwargs)
        if not isinstance(default_filter, TrueFilter):
            try:
                with azure_errors(f"set the filter of {topic}/{name}"):
                    await self._conn.admin.delete_rule(topic, name, DEFAULT_RULE_NAME)
                    await self._conn.admin.create_rule(
                        topic, name, DEFAULT_RULE_NAME, filter=to_azure_filter(default_filter)
                    )
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._conn.admin.delete_subscription(topic, name)
                raise
        return _subscription(topic, created)

    async def get_subscription(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionProperties:
        """``get_subscription``."""
        self._conn.check()
        with azure_errors(f"subscription {topic_name}/{subscription_name}"):
            value = await self._conn.admin.get_subscription(topic_name, subscription_name)
        return _subscription(topic_name, value)

    async def list_subscriptions(self, topic_name: str) -> list[SubscriptionProperties]:
        """``list_subscriptions``, by name."""
        self._conn.check()
        out: list[SubscriptionProperties] = []
        with azure_errors(f"list subscriptions of {topic_name!r}"):
            async for item in self._conn.admin.list_subscriptions(topic_name):
                out.append(_subscription(topic_name, item))
        return sorted(out, key=lambda s: s.name)

    async def delete_subscription(self, topic_name: str, subscription_name: str) -> None:
        """``delete_subscription``."""
        self._conn.check()
        await self._conn.drop_handlers(topic_name, subscription_name)
        with azure_errors(f"delete subscription {topic_name}/{subscription_name}"):
            await self._conn.admin.delete_subscription(topic_name, subscription_name)

    async def get_subscription_runtime_properties(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionRuntimeProperties:
        """Live messages (the total minus dead letters, so scheduled ones count), and dead
        letters."""
        self._conn.check()
        with azure_errors(f"subscription {topic_name}/{subscription_name}"):
            info = await self._conn.admin.get_subscription_runtime_properties(
                topic_name, subscription_name
            )
        dead = int(info.dead_letter_message_count or 0)
        total = info.total_message_count
        live = (
            int(total) - dead - int(info.transfer_dead_letter_message_count or 0)
            if total is not None
            else int(info.active_message_count or 0)
        )
        return SubscriptionRuntimeProperties(topic_name, subscription_name, max(0, live), dead)

    # -------------------------------------------------------------- rules

    async def add_rule(
        self, topic_name: str, subscription_name: str, rule_name: str, rule_filter: Filter
    ) -> RuleProperties:
        """``create_rule``."""
        self._conn.check()
        with azure_errors(f"create rule {rule_name!r} on {topic_name}/{subscription_name}"):
            await self._conn.admin.create_rule(
                topic_name, subscription_name, rule_name, filter=to_azure_filter(rule_filter)
            )
        return RuleProperties(rule_name, rule_filter)

    async def remove_rule(self, topic_name: str, subscription_name: str, rule_name: str) -> None:
        """``delete_rule``."""
        self._conn.check()
        with azure_errors(f"rule {rule_name!r} of {topic_name}/{subscription_name}"):
            await self._conn.admin.delete_rule(topic_name, subscription_name, rule_name)

    async def list_rules(self, topic_name: str, subscription_name: str) -> list[RuleProperties]:
        """``list_rules``, by name."""
        self._conn.check()
        out: list[RuleProperties] = []
        with azure_errors(f"list rules of {topic_name}/{subscription_name}"):
            async for item in self._conn.admin.list_rules(topic_name, subscription_name):
                out.append(RuleProperties(str(item.name), from_azure_filter(item.filter)))
        return sorted(out, key=lambda r: r.name)
