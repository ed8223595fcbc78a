"""The entity catalog: topics, subscriptions and rules stored as JSON records in the engine's
durable bindings, and each topic's state cached for ``metadata_refresh_seconds``.

A record is bound under its key (``_sb.meta/topic/<topic>``, ...) with a version ``v`` (the
clock's time when written); when two processes wrote one, the newest wins. Filters are
compiled once per distinct record and cached.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Mapping

from ...brokers.base import Broker
from ...clock import Clock
from ...errors import EntityNotFoundError
from ..entities import SubscriptionProperties, TopicProperties, subscription_queue
from ..sqlfilter import CorrelationFilter, Filter, filter_from_rule
from .ledger import SizeLedger

__all__ = [
    "EntityCatalog",
    "SubscriptionState",
    "TopicState",
    "dumps",
    "filter_record",
    "rules_key",
    "sub_key",
    "subs_key",
    "topic_key",
    "topic_props",
    "topics_key",
]

log = logging.getLogger("aos.messaging.servicebus")


@dataclass(slots=True)
class SubscriptionState:
    """A subscription as the send and receive paths use it: settings, queue and rules."""

    props: SubscriptionProperties
    queue: str
    rules: tuple[tuple[str, Filter], ...]


@dataclass(slots=True)
class TopicState:
    """A topic's settings and subscriptions, as loaded at ``loaded_at`` (monotonic)."""

    props: TopicProperties
    subs: dict[str, SubscriptionState]
    loaded_at: float


# ------------------------------------------------------------------------------- record keys


def topics_key() -> str:
    """The binding listing every topic's name."""
    return "_sb.meta/topics"


def topic_key(topic: str) -> str:
    """The binding holding a topic's settings."""
    return f"_sb.meta/topic/{topic}"


def subs_key(topic: str) -> str:
    """The binding listing a topic's subscription names."""
    return f"_sb.meta/subscriptions/{topic}"


def sub_key(topic: str, sub: str) -> str:
    """The binding holding a subscription's settings."""
    return f"_sb.meta/subscription/{topic}/subscriptions/{sub}"


def rules_key(topic: str, sub: str) -> str:
    """The binding holding a subscription's rules (one record each)."""
    return f"_sb.meta/rules/{topic}/subscriptions/{sub}"


# ------------------------------------------------------------------------------- records


def dumps(record: Mapping[str, Any]) -> str:
    """A record's canonical JSON text."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def filter_record(name: str, rule_filter: Filter) -> dict[str, Any]:
    """The record of a rule: its name and its filter as SQL or correlation fields."""
    if isinstance(rule_filter, CorrelationFilter):
        fields: dict[str, Any] = dict(rule_filter.system_values)
        if rule_filter.properties:
            fields["properties"] = dict(rule_filter.properties)
        return {"name": name, "correlation": fields}
    sql = getattr(rule_filter, "expression", None)
    if not isinstance(sql, str):
        sql = rule_filter.to_sql()
    return {"name": name, "sql": sql}


def topic_props(name: str, record: Mapping[str, Any]) -> TopicProperties:
    """A topic's settings from its record."""
    return TopicProperties(
        name=name,
        max_size_in_mb=float(record.get("max_size_in_mb", 1024)),
        default_message_ttl_seconds=record.get("default_message_ttl_seconds"),
        requires_duplicate_detection=bool(record.get("requires_duplicate_detection", False)),
        duplicate_detection_window_seconds=float(
            record.get("duplicate_detection_window_seconds", 600.0)
        ),
    )


def _sub_props(topic: str, name: str, record: Mapping[str, Any]) -> SubscriptionProperties:
    return SubscriptionProperties(
        topic_name=topic,
        name=name,
        max_delivery_count=int(record.get("max_delivery_count", 10)),
        lock_duration=float(record.get("lock_duration", 60.0)),
        dead_lettering_on_message_expiration=bool(
            record.get("dead_lettering_on_message_expiration", True)
        ),
        default_message_ttl_seconds=record.get("default_message_ttl_seconds"),
    )


class EntityCatalog:
    """Reads and writes the records, and caches each topic's :class:`TopicState`.

    ``broker`` returns the engine (it raises once the service bus is closed); ``ledger`` is
    reconciled with the queue depths whenever a topic is loaded.
    """

    def __init__(
        self,
        broker: Callable[[], Broker],
        clock: Clock,
        ledger: SizeLedger,
        metadata_refresh_seconds: float,
    ) -> None:
        self._broker = broker
        self._clock = clock
        self._ledger = ledger
        self.metadata_refresh_seconds = metadata_refresh_seconds
        self._topics: dict[str, TopicState] = {}
        self._topic_locks: dict[str, asyncio.Lock] = {}
        self._filters: dict[str, Filter] = {}

    # -------------------------------------------------------------- records

    async def records(self, key: str) -> list[dict[str, Any]]:
        """Every record bound under ``key`` (with its text under ``_text``)."""
        out: list[dict[str, Any]] = []
        for text in await self._broker().bindings(key):
            try:
                value = json.loads(text)
            except ValueError:
                log.warning("ignoring a corrupt service bus record under %r", key)
                continue
            if isinstance(value, dict):
                value["_text"] = text
                out.append(value)
        return out

    async def record(self, key: str) -> dict[str, Any] | None:
        """The newest record under ``key``, or None."""
        records = await self.records(key)
        if not records:
            return None
        return max(records, key=lambda r: (float(r.get("v", 0.0)), r["_text"]))

    async def write(self, key: str, record: dict[str, Any]) -> None:
        """Bind ``record`` (versioned now) under ``key`` and unbind the older ones."""
        old = await self._broker().bindings(key)
        text = dumps({**record, "v": self._clock.now()})
        await self._broker().bind(key, text)
        for item in old:
            if item != text:
                await self._broker().unbind(key, item)

    async def erase(self, key: str) -> None:
        """Unbind every record under ``key``."""
        for item in await self._broker().bindings(key):
            await self._broker().unbind(key, item)

    def compiled(self, record: Mapping[str, Any]) -> Filter:
        """The filter of a rule record, compiled once per distinct record."""
        text = dumps({k: v for k, v in record.items() if k in ("sql", "correlation")})
        cached = self._filters.get(text)
        if cached is not None:
            return cached
        if "correlation" in record:
            fields = dict(record["correlation"])
            built: Filter = CorrelationFilter(**fields)
        else:
            built = filter_from_rule(str(record.get("sql", "1=1")))
        self._filters[text] = built
        return built

    # -------------------------------------------------------------- cached state

    async def _load(self, topic: str) -> TopicState | None:
        record = await self.record(topic_key(topic))
        if record is None:
            self._topics.pop(topic, None)
            return None
        subs: dict[str, SubscriptionState] = {}
        for name in await self._broker().bindings(subs_key(topic)):
            sub_record = await self.record(sub_key(topic, name))
            if sub_record is None:
                continue
            rules = sorted(
                (str(r["name"]), self.compiled(r))
                for r in await self.records(rules_key(topic, name))
                if "name" in r
            )
            queue = subscription_queue(topic, name)
            props = _sub_props(topic, name, sub_record)
            subs[name] = SubscriptionState(props, queue, tuple(rules))
            self._ledger.reconcile(queue, await self._broker().depth(queue))
        state = TopicState(topic_props(topic, record), subs, self._clock.monotonic())
        self._topics[topic] = state
        return state

    async def state(self, topic: str, *, fresh: bool = False) -> TopicState:
        """The topic's state: cached unless older than ``metadata_refresh_seconds`` or
        ``fresh`` is asked for (:class:`EntityNotFoundError` when there is no such topic)."""
        state = self._topics.get(topic)
        now = self._clock.monotonic()
        if (
            state is not None
            and not fresh
            and now - state.loaded_at < self.metadata_refresh_seconds
        ):
            return state
        lock = self._topic_locks.setdefault(topic, asyncio.Lock())
        async with lock:
            state = self._topics.get(topic)
            if (
                state is None
                or fresh
                or self._clock.monotonic() - state.loaded_at >= self.metadata_refresh_seconds
            ):
                state = await self._load(topic)
        if state is None:
            raise EntityNotFoundError(f"topic {topic!r} does not exist")
        return state

    async def subscription(self, topic: str, sub: str, *, fresh: bool = False) -> SubscriptionState:
        """A subscription's state; a cached topic that lacks it is reloaded once."""
        state = await self.state(topic, fresh=fresh)
        found = state.subs.get(sub)
        if found is None and not fresh:
            state = await self.state(topic, fresh=True)
            found = state.subs.get(sub)
        if found is None:
            raise EntityNotFoundError(f"subscription {sub!r} of topic {topic!r} does not exist")
        return found

    def invalidate(self, topic: str) -> None:
        """Forget the cached state of ``topic`` (it was changed here)."""
        self._topics.pop(topic, None)
