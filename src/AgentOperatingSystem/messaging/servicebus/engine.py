"""Service Bus on one of our engines: topics and subscriptions as bound queues, SQL filter
rules evaluated here, sizes kept in a ledger."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Mapping

from ..brokers import open_broker
from ..brokers.base import Broker, DeadLetter, Delivery, Envelope, Settlement
from ..clock import SYSTEM_CLOCK, Clock
from ..codec.envelope import decode, encode
from ..errors import (
    BrokerClosedError,
    ConfigurationError,
    DecodeError,
    DuplicateMessageError,
    EntityExistsError,
    EntityNotFoundError,
    FilterEvaluationError,
    LockLostError,
    MessagingError,
    ServiceBusError,
    TopicFullError,
    UnknownMessageError,
)
from ..metadata import DLQ_ERROR, DLQ_REASON
from ..types import Message, MessageType, new_message_id
from .backend import (
    _MIB,
    DEFAULT_RULE_NAME,
    REASON_EXPIRED,
    REASON_MAX_DELIVERY,
    REASON_UNDECODABLE,
    SERVICEBUS_KEY,
    OutgoingMessage,
    RuleProperties,
    SubscriptionProperties,
    SubscriptionRuntimeProperties,
    TopicProperties,
    TopicRuntimeProperties,
    _min_ttl,
    _promoted,
    subscription_queue,
)
from .sqlfilter import CorrelationFilter, Filter, filter_from_rule

__all__ = ["EngineServiceBus"]

log = logging.getLogger("aos.messaging.servicebus")


@dataclass(slots=True)
class _Sub:
    props: SubscriptionProperties
    queue: str
    rules: tuple[tuple[str, Filter], ...]


@dataclass(slots=True)
class _Topic:
    props: TopicProperties
    subs: dict[str, _Sub]
    loaded_at: float


@dataclass(slots=True)
class _Held:
    topic: str
    subscription: str
    token: str
    size: int


class _SizeLedger:
    """Bytes of live messages per subscription queue (see the module docstring)."""

    def __init__(self) -> None:
        self._queues: dict[str, list[int]] = {}  # queue -> [count, bytes]
        self._mean = 0.0

    def observe(self, size: int) -> None:
        """Seed the mean size (used to estimate messages this manager did not count)."""
        if self._mean == 0.0:
            self._mean = float(size)

    def add(self, queue: str, size: int) -> None:
        entry = self._queues.setdefault(queue, [0, 0])
        entry[0] += 1
        entry[1] += size
        self._mean = size if self._mean == 0.0 else 0.95 * self._mean + 0.05 * size

    def remove(self, queue: str, size: int) -> None:
        entry = self._queues.get(queue)
        if entry is None:
            return
        entry[0] = max(0, entry[0] - 1)
        entry[1] = 0 if entry[0] == 0 else max(0, entry[1] - size)

    def reconcile(self, queue: str, depth: int) -> None:
        entry = self._queues.setdefault(queue, [0, 0])
        count, size = entry
        if depth == count:
            return
        if depth <= 0:
            entry[0] = entry[1] = 0
        elif count > 0:
            entry[0], entry[1] = depth, round(size * depth / count)
        else:
            entry[0], entry[1] = depth, round(depth * (self._mean or 1024.0))

    def bytes(self, queue: str) -> int:
        entry = self._queues.get(queue)
        return entry[1] if entry is not None else 0

    def drop(self, queue: str) -> None:
        self._queues.pop(queue, None)


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def _filter_record(name: str, rule_filter: Filter) -> dict[str, Any]:
    if isinstance(rule_filter, CorrelationFilter):
        fields: dict[str, Any] = dict(rule_filter.system_values)
        if rule_filter.properties:
            fields["properties"] = dict(rule_filter.properties)
        return {"name": name, "correlation": fields}
    sql = getattr(rule_filter, "expression", None)
    if not isinstance(sql, str):
        sql = rule_filter.to_sql()
    return {"name": name, "sql": sql}


class EngineServiceBus:
    """Service Bus semantics on a broker-seam engine (memory, SQLite, NATS).

    ``broker`` may be injected (e.g. to share a :class:`~.bus.MessageBus`'s engine); it is
    then not closed by :meth:`close`. ``clock`` drives lock, TTL and scheduling times.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        broker: Broker | None = None,
        clock: Clock | None = None,
        poll_interval: float = 0.5,
        metadata_refresh_seconds: float = 1.0,
    ) -> None:
        if broker is None and not url:
            raise ConfigurationError("EngineServiceBus needs an engine URL or a broker")
        self.url = url or ""
        self.kind = self.url.split(":", 1)[0].lower() if self.url else "injected"
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._broker: Broker | None = broker
        self._owns_broker = broker is None
        self.poll_interval = poll_interval
        self.metadata_refresh_seconds = metadata_refresh_seconds
        self._topics: dict[str, _Topic] = {}
        self._topic_locks: dict[str, asyncio.Lock] = {}
        self._filters: dict[str, Filter] = {}
        self._ledger = _SizeLedger()
        self._held: dict[tuple[str, str], _Held] = {}
        self._closing = asyncio.Event()
        self._closed = False

    # -------------------------------------------------------------- lifecycle

    @property
    def broker(self) -> Broker:
        """The engine (after :meth:`start`)."""
        if self._broker is None or self._closed:
            raise BrokerClosedError("the service bus is not started or already closed")
        return self._broker

    async def start(self) -> None:
        """Open the engine (unless one was injected)."""
        if self._broker is None:
            self._broker = await open_broker(self.url, clock=self.clock)

    async def close(self) -> None:
        """Release unsettled messages, wake receivers, close an owned engine."""
        if self._closed:
            return
        self._closing.set()
        broker = self._broker
        if broker is not None:
            for (queue, delivery_id), held in list(self._held.items()):
                try:
                    await broker.release(queue, Settlement(delivery_id, held.token))
                except MessagingError:
                    break
        self._held.clear()
        self._closed = True
        if broker is not None and self._owns_broker:
            await broker.close()

    # -------------------------------------------------------------- metadata in bindings

    @staticmethod
    def _topics_key() -> str:
        return "_sb.meta/topics"

    @staticmethod
    def _topic_key(topic: str) -> str:
        return f"_sb.meta/topic/{topic}"

    @staticmethod
    def _subs_key(topic: str) -> str:
        return f"_sb.meta/subscriptions/{topic}"

    @staticmethod
    def _sub_key(topic: str, sub: str) -> str:
        return f"_sb.meta/subscription/{topic}/subscriptions/{sub}"

    @staticmethod
    def _rules_key(topic: str, sub: str) -> str:
        return f"_sb.meta/rules/{topic}/subscriptions/{sub}"

    async def _records(self, key: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for text in await self.broker.bindings(key):
            try:
                value = json.loads(text)
            except ValueError:
                log.warning("ignoring a corrupt service bus record under %r", key)
                continue
            if isinstance(value, dict):
                value["_text"] = text
                out.append(value)
        return out

    async def _record(self, key: str) -> dict[str, Any] | None:
        records = await self._records(key)
        if not records:
            return None
        return max(records, key=lambda r: (float(r.get("v", 0.0)), r["_text"]))

    async def _write(self, key: str, record: dict[str, Any]) -> None:
        old = await self.broker.bindings(key)
        text = _dumps({**record, "v": self.clock.now()})
        await self.broker.bind(key, text)
        for item in old:
            if item != text:
                await self.broker.unbind(key, item)

    async def _erase(self, key: str) -> None:
        for item in await self.broker.bindings(key):
            await self.broker.unbind(key, item)

    def _compiled(self, record: Mapping[str, Any]) -> Filter:
        text = _dumps({k: v for k, v in record.items() if k in ("sql", "correlation")})
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

    @staticmethod
    def _topic_props(name: str, record: Mapping[str, Any]) -> TopicProperties:
        return TopicProperties(
            name=name,
            max_size_in_mb=float(record.get("max_size_in_mb", 1024)),
            default_message_ttl_seconds=record.get("default_message_ttl_seconds"),
            requires_duplicate_detection=bool(record.get("requires_duplicate_detection", False)),
            duplicate_detection_window_seconds=float(
                record.get("duplicate_detection_window_seconds", 600.0)
            ),
        )

    @staticmethod
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

    async def _load(self, topic: str) -> _Topic | None:
        record = await self._record(self._topic_key(topic))
        if record is None:
            self._topics.pop(topic, None)
            return None
        subs: dict[str, _Sub] = {}
        for name in await self.broker.bindings(self._subs_key(topic)):
            sub_record = await self._record(self._sub_key(topic, name))
            if sub_record is None:
                continue
            rules = sorted(
                (str(r["name"]), self._compiled(r))
                for r in await self._records(self._rules_key(topic, name))
                if "name" in r
            )
            queue = subscription_queue(topic, name)
            subs[name] = _Sub(self._sub_props(topic, name, sub_record), queue, tuple(rules))
            self._ledger.reconcile(queue, await self.broker.depth(queue))
        state = _Topic(self._topic_props(topic, record), subs, self.clock.monotonic())
        self._topics[topic] = state
        return state

    async def _state(self, topic: str, *, fresh: bool = False) -> _Topic:
        state = self._topics.get(topic)
        now = self.clock.monotonic()
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
                or self.clock.monotonic() - state.loaded_at >= self.metadata_refresh_seconds
            ):
                state = await self._load(topic)
        if state is None:
            raise EntityNotFoundError(f"topic {topic!r} does not exist")
        return state

    async def _sub_state(self, topic: str, sub: str, *, fresh: bool = False) -> _Sub:
        state = await self._state(topic, fresh=fresh)
        found = state.subs.get(sub)
        if found is None and not fresh:
            state = await self._state(topic, fresh=True)
            found = state.subs.get(sub)
        if found is None:
            raise EntityNotFoundError(f"subscription {sub!r} of topic {topic!r} does not exist")
        return found

    def _invalidate(self, topic: str) -> None:
        self._topics.pop(topic, None)

    # -------------------------------------------------------------- topics

    async def create_topic(self, props: TopicProperties) -> TopicProperties:
        """Create a topic."""
        name = props.name
        if await self._record(self._topic_key(name)) is not None:
            raise EntityExistsError(f"topic {name!r} already exists")
        await self._write(
            self._topic_key(name),
            {
                "max_size_in_mb": props.max_size_in_mb,
                "default_message_ttl_seconds": props.default_message_ttl_seconds,
                "requires_duplicate_detection": props.requires_duplicate_detection,
                "duplicate_detection_window_seconds": props.duplicate_detection_window_seconds,
            },
        )
        await self.broker.bind(self._topics_key(), name)
        self._invalidate(name)
        return props

    async def get_topic(self, topic_name: str) -> TopicProperties:
        """A topic's settings."""
        return (await self._state(topic_name, fresh=True)).props

    async def list_topics(self) -> list[TopicProperties]:
        """Every topic, by name."""
        out: list[TopicProperties] = []
        for name in sorted(await self.broker.bindings(self._topics_key())):
            record = await self._record(self._topic_key(name))
            if record is not None:
                out.append(self._topic_props(name, record))
        return out

    async def delete_topic(self, topic_name: str) -> None:
        """Delete a topic, its subscriptions and their messages."""
        state = await self._state(topic_name, fresh=True)
        for sub in list(state.subs):
            await self._drop_subscription(topic_name, sub)
        await self._erase(self._subs_key(topic_name))
        await self._erase(self._topic_key(topic_name))
        await self.broker.unbind(self._topics_key(), topic_name)
        self._invalidate(topic_name)

    async def get_topic_runtime_properties(self, topic_name: str) -> TopicRuntimeProperties:
        """The topic's counted size and its number of subscriptions."""
        state = await self._state(topic_name, fresh=True)
        size = sum(self._ledger.bytes(s.queue) for s in state.subs.values())
        return TopicRuntimeProperties(topic_name, size, len(state.subs))

    # -------------------------------------------------------------- subscriptions

    async def create_subscription(
        self, props: SubscriptionProperties, default_filter: Filter
    ) -> SubscriptionProperties:
        """Create a subscription with its ``$Default`` rule."""
        topic, name = props.topic_name, props.name
        await self._state(topic, fresh=True)
        if await self._record(self._sub_key(topic, name)) is not None:
            raise EntityExistsError(f"subscription {name!r} of topic {topic!r} already exists")
        self._compiled(_filter_record(DEFAULT_RULE_NAME, default_filter))
        await self._erase(self._rules_key(topic, name))
        await self.broker.bind(
            self._rules_key(topic, name), _dumps(_filter_record(DEFAULT_RULE_NAME, default_filter))
        )
        await self._write(
            self._sub_key(topic, name),
            {
                "max_delivery_count": props.max_delivery_count,
                "lock_duration": props.lock_duration,
                "dead_lettering_on_message_expiration": props.dead_lettering_on_message_expiration,
                "default_message_ttl_seconds": props.default_message_ttl_seconds,
            },
        )
        await self.broker.bind(self._subs_key(topic), name)
        self._invalidate(topic)
        return props

    async def get_subscription(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionProperties:
        """A subscription's settings."""
        return (await self._sub_state(topic_name, subscription_name, fresh=True)).props

    async def list_subscriptions(self, topic_name: str) -> list[SubscriptionProperties]:
        """The topic's subscriptions, by name."""
        state = await self._state(topic_name, fresh=True)
        return [state.subs[name].props for name in sorted(state.subs)]

    async def _drop_subscription(self, topic: str, sub: str) -> None:
        queue = subscription_queue(topic, sub)
        await self.broker.unbind(self._subs_key(topic), sub)
        await self.broker.delete_queue(queue)
        await self._erase(self._rules_key(topic, sub))
        await self._erase(self._sub_key(topic, sub))
        self._ledger.drop(queue)
        for key in [k for k in self._held if k[0] == queue]:
            del self._held[key]

    async def delete_subscription(self, topic_name: str, subscription_name: str) -> None:
        """Delete a subscription and its messages (dead letters too)."""
        await self._sub_state(topic_name, subscription_name, fresh=True)
        await self._drop_subscription(topic_name, subscription_name)
        self._invalidate(topic_name)

    async def get_subscription_runtime_properties(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionRuntimeProperties:
        """Live and dead-lettered message counts."""
        sub = await self._sub_state(topic_name, subscription_name)
        return SubscriptionRuntimeProperties(
            topic_name,
            subscription_name,
            await self.broker.depth(sub.queue),
            await self.broker.dead_letter_depth(sub.queue),
        )

    # -------------------------------------------------------------- rules

    async def add_rule(
        self, topic_name: str, subscription_name: str, rule_name: str, rule_filter: Filter
    ) -> RuleProperties:
        """Add a rule; its filter is compiled now."""
        await self._sub_state(topic_name, subscription_name, fresh=True)
        key = self._rules_key(topic_name, subscription_name)
        if any(r.get("name") == rule_name for r in await self._records(key)):
            raise EntityExistsError(
                f"rule {rule_name!r} of subscription {subscription_name!r} already exists"
            )
        record = _filter_record(rule_name, rule_filter)
        self._compiled(record)
        await self.broker.bind(key, _dumps(record))
        self._invalidate(topic_name)
        return RuleProperties(rule_name, rule_filter)

    async def remove_rule(self, topic_name: str, subscription_name: str, rule_name: str) -> None:
        """Remove a rule (a subscription without rules receives nothing)."""
        await self._sub_state(topic_name, subscription_name, fresh=True)
        key = self._rules_key(topic_name, subscription_name)
        found = [r for r in await self._records(key) if r.get("name") == rule_name]
        if not found:
            raise EntityNotFoundError(
                f"rule {rule_name!r} of subscription {subscription_name!r} does not exist"
            )
        for record in found:
            await self.broker.unbind(key, record["_text"])
        self._invalidate(topic_name)

    async def list_rules(self, topic_name: str, subscription_name: str) -> list[RuleProperties]:
        """The subscription's rules, by name."""
        sub = await self._sub_state(topic_name, subscription_name, fresh=True)
        return [RuleProperties(name, f) for name, f in sub.rules]

    # -------------------------------------------------------------- sending

    async def send(self, topic_name: str, outgoing: OutgoingMessage) -> None:
        """Evaluate each subscription's rules and enqueue one copy per matching one."""
        body = encode(outgoing.message)
        size = len(body)
        self._ledger.observe(size)  # the first estimate of messages already there
        state = await self._state(topic_name)
        props = outgoing.properties
        system = outgoing.system
        matched: list[_Sub] = []
        for sub in state.subs.values():
            for rule_name, rule_filter in sub.rules:
                try:
                    hit = rule_filter.evaluate(props, system)
                except FilterEvaluationError:
                    log.warning(
                        "rule %r of %s/%s failed on message %s; treated as no match",
                        rule_name,
                        topic_name,
                        sub.props.name,
                        outgoing.message.message_id,
                        exc_info=True,
                    )
                    hit = False
                if hit:
                    matched.append(sub)
                    break
        if not matched:
            return
        topic = state.props
        limit = int(topic.max_size_in_mb * _MIB)
        used = sum(self._ledger.bytes(s.queue) for s in state.subs.values())
        if used + size * len(matched) > limit:
            raise TopicFullError(
                f"topic {topic_name!r} is full: {used} of {limit} bytes used and this message"
                f" needs {size * len(matched)} ({size} bytes x {len(matched)} subscriptions)"
            )
        now = self.clock.now()
        available_at = 0.0
        if outgoing.scheduled_enqueue_time is not None:
            available_at = outgoing.scheduled_enqueue_time.timestamp()
        delivery_id = new_message_id()
        envelopes: list[Envelope] = []
        for sub in matched:
            ttl = _min_ttl(
                outgoing.time_to_live,
                topic.default_message_ttl_seconds,
                sub.props.default_message_ttl_seconds,
            )
            start = max(now, available_at)
            envelopes.append(
                Envelope(
                    queue=sub.queue,
                    message_id=delivery_id,
                    priority=outgoing.message.priority.value,
                    body=body,
                    available_at=available_at,
                    expires_at=None if ttl is None else start + ttl,
                    dedup_key=(
                        f"{sub.queue}\x1f{outgoing.message.message_id}"
                        if topic.requires_duplicate_detection
                        else None
                    ),
                )
            )
        window = (
            topic.duplicate_detection_window_seconds if topic.requires_duplicate_detection else 0.0
        )
        try:
            flags = await self.broker.send(envelopes, dedup_window=window)
        except DuplicateMessageError as exc:  # a fresh delivery id cannot collide
            raise ServiceBusError(f"engine refused the send: {exc}") from exc
        for env, ok in zip(envelopes, flags):
            if ok:
                self._ledger.add(env.queue, size)

    # -------------------------------------------------------------- receiving

    async def _idle(self, queue: str, timeout: float) -> None:
        if self._closing.is_set():
            return
        waiter = asyncio.ensure_future(self.broker.wait(queue, timeout))
        stopper = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, stopper):
                if not task.done():
                    task.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)

    async def _expire(self, sub: _Sub, d: Delivery, size: int) -> None:
        settle = Settlement(d.message_id, d.token)
        if sub.props.dead_lettering_on_message_expiration:
            ok = await self.broker.dead_letter(
                sub.queue,
                settle,
                reason=REASON_EXPIRED,
                error="The message expired and was dead lettered.",
            )
        else:
            ok = (await self.broker.ack(sub.queue, [settle]))[0]
        if ok:
            self._ledger.remove(sub.queue, size)

    async def _admit(self, sub: _Sub, d: Delivery) -> Message | None:
        body = d.body
        size = len(body) if body is not None else 0
        settle = Settlement(d.message_id, d.token)
        if d.expires_at is not None and d.expires_at <= self.clock.now():
            await self._expire(sub, d, size)
            return None
        limit = sub.props.max_delivery_count
        if d.attempts > limit:
            if await self.broker.dead_letter(
                sub.queue,
                settle,
                reason=REASON_MAX_DELIVERY,
                error=f"Message could not be consumed after {limit} delivery attempts.",
            ):
                self._ledger.remove(sub.queue, size)
            return None
        try:
            if d.message is not None:
                msg = d.message.copy()
            else:
                msg, _ = decode(body or b"")
        except DecodeError as exc:
            if await self.broker.dead_letter(
                sub.queue, settle, reason=REASON_UNDECODABLE, error=str(exc)[:2000]
            ):
                self._ledger.remove(sub.queue, size)
            return None
        info = dict(msg.metadata.get(SERVICEBUS_KEY) or {})
        info["properties"] = {**_promoted(msg.content), **dict(info.get("properties") or {})}
        info.update(
            topic=sub.props.topic_name,
            subscription=sub.props.name,
            lock_token=d.token,
            delivery_id=d.message_id,
            delivery_count=d.attempts,
            enqueued_at=d.enqueued_at,
            locked_until=self.clock.now() + sub.props.lock_duration,
            expires_at=d.expires_at,
            size=size,
        )
        msg.metadata[SERVICEBUS_KEY] = info
        self._held[(sub.queue, d.message_id)] = _Held(
            sub.props.topic_name, sub.props.name, d.token, size
        )
        return msg

    async def receive(
        self, topic_name: str, subscription_name: str, max_count: int, timeout: float | None
    ) -> list[Message]:
        """Lock and return up to ``max_count`` messages (see :class:`ServiceBusBackend`)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._closing.is_set():
            sub = await self._sub_state(topic_name, subscription_name)
            out: list[Message] = []
            try:
                batch = await self.broker.receive(sub.queue, max_count, sub.props.lock_duration)
                for d in batch:
                    msg = await self._admit(sub, d)
                    if msg is not None:
                        out.append(msg)
            except BrokerClosedError:
                return []  # closed meanwhile: what was locked is delivered again later
            if out:
                return out
            if batch:
                continue
            wait = self.poll_interval
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    return []
                wait = min(wait, left)
            try:
                await self._idle(sub.queue, wait)
            except BrokerClosedError:
                return []
        return []

    # -------------------------------------------------------------- settling

    @staticmethod
    def _handle(message: Message) -> tuple[str, str, str, str, dict[str, Any]]:
        info = message.metadata.get(SERVICEBUS_KEY) if isinstance(message, Message) else None
        if not isinstance(info, dict):
            raise UnknownMessageError(
                "this message was not received from a subscription (no lock to settle)"
            )
        topic, sub = info.get("topic"), info.get("subscription")
        token, delivery_id = info.get("lock_token"), info.get("delivery_id")
        if not (isinstance(topic, str) and isinstance(sub, str) and isinstance(delivery_id, str)):
            raise UnknownMessageError(
                "this message was not received from a subscription (no lock to settle)"
            )
        if not isinstance(token, str):
            raise UnknownMessageError(
                f"message {message.message_id!r} holds no lock: it was already settled, or"
                " it was read from the dead-letter queue"
            )
        return topic, sub, token, delivery_id, info

    def _settled(self, message: Message, queue: str, delivery_id: str) -> int:
        info = message.metadata[SERVICEBUS_KEY]
        info["lock_token"] = None
        held = self._held.pop((queue, delivery_id), None)
        if held is not None:
            return held.size
        size = info.get("size")
        return int(size) if isinstance(size, int) else 0

    def _lock_lost(self, message: Message, queue: str, delivery_id: str) -> LockLostError:
        self._held.pop((queue, delivery_id), None)
        message.metadata[SERVICEBUS_KEY]["lock_token"] = None
        return LockLostError(
            f"the lock on message {message.message_id!r} expired (or it was settled"
            " elsewhere); it will be delivered again"
        )

    async def complete(self, message: Message) -> None:
        """Remove the message from its subscription."""
        topic, sub, token, delivery_id, _ = self._handle(message)
        queue = subscription_queue(topic, sub)
        ok = await self.broker.ack(queue, [Settlement(delivery_id, token)])
        if not ok[0]:
            raise self._lock_lost(message, queue, delivery_id)
        self._ledger.remove(queue, self._settled(message, queue, delivery_id))

    async def abandon(self, message: Message) -> None:
        """Unlock the message for redelivery now, or dead-letter it after the last delivery."""
        topic, sub_name, token, delivery_id, info = self._handle(message)
        queue = subscription_queue(topic, sub_name)
        try:
            sub = await self._sub_state(topic, sub_name)
            limit = sub.props.max_delivery_count
        except EntityNotFoundError:
            limit = None
        count = info.get("delivery_count")
        settle = Settlement(delivery_id, token)
        if limit is not None and isinstance(count, int) and count >= limit:
            ok = await self.broker.dead_letter(
                queue,
                settle,
                reason=REASON_MAX_DELIVERY,
                error=f"Message could not be consumed after {limit} delivery attempts.",
            )
            if not ok:
                raise self._lock_lost(message, queue, delivery_id)
            self._ledger.remove(queue, self._settled(message, queue, delivery_id))
            return
        if not await self.broker.release(queue, settle, delay=0.0, error="abandoned"):
            raise self._lock_lost(message, queue, delivery_id)
        self._settled(message, queue, delivery_id)

    async def dead_letter(
        self, message: Message, reason: str | None, error_description: str | None
    ) -> None:
        """Move the message to its subscription's dead-letter queue."""
        topic, sub, token, delivery_id, _ = self._handle(message)
        queue = subscription_queue(topic, sub)
        ok = await self.broker.dead_letter(
            queue, Settlement(delivery_id, token), reason=reason or "", error=error_description
        )
        if not ok:
            raise self._lock_lost(message, queue, delivery_id)
        self._ledger.remove(queue, self._settled(message, queue, delivery_id))

    async def renew_lock(self, message: Message) -> datetime:
        """Extend the lock by the subscription's ``lock_duration``."""
        topic, sub_name, token, delivery_id, info = self._handle(message)
        sub = await self._sub_state(topic, sub_name)
        ok = await self.broker.renew(
            sub.queue, [Settlement(delivery_id, token)], sub.props.lock_duration
        )
        if not ok[0]:
            raise self._lock_lost(message, sub.queue, delivery_id)
        until = self.clock.now() + sub.props.lock_duration
        info["locked_until"] = until
        return datetime.fromtimestamp(until, UTC)

    # -------------------------------------------------------------- dead letters

    def _dead_message(self, sub: _Sub, dl: DeadLetter) -> Message:
        try:
            if dl.message is not None:
                msg = dl.message.copy()
            else:
                msg, _ = decode(dl.body or b"")
        except MessagingError as exc:
            raw = dl.body or b""
            msg = Message(
                message_id=dl.message_id,
                message_type=MessageType.ERROR,
                content={
                    "raw_base64": base64.b64encode(raw[:65536]).decode(),
                    "raw_size": len(raw),
                    "decode_error": str(exc)[:2000],
                },
            )
        info = dict(msg.metadata.get(SERVICEBUS_KEY) or {})
        info["properties"] = {**_promoted(msg.content), **dict(info.get("properties") or {})}
        info.update(
            topic=sub.props.topic_name,
            subscription=sub.props.name,
            lock_token=None,
            delivery_id=dl.message_id,
            delivery_count=dl.attempts,
            enqueued_at=dl.enqueued_at,
            dead_lettered_at=dl.dead_lettered_at,
            dead_letter_reason=dl.reason or None,
            dead_letter_error_description=dl.error,
            size=len(dl.body) if dl.body is not None else 0,
        )
        msg.metadata[SERVICEBUS_KEY] = info
        msg.metadata[DLQ_REASON] = dl.reason or None
        msg.metadata[DLQ_ERROR] = dl.error
        return msg

    async def dead_letters(
        self, topic_name: str, subscription_name: str, max_count: int
    ) -> list[Message]:
        """Read the subscription's dead letters, oldest first."""
        sub = await self._sub_state(topic_name, subscription_name)
        return [
            self._dead_message(sub, dl)
            for dl in await self.broker.dead_letters(sub.queue, max_count)
        ]

    async def resubmit(self, message: Message) -> None:
        """Move a dead letter back into its subscription (delivery count reset)."""
        info = message.metadata.get(SERVICEBUS_KEY) if isinstance(message, Message) else None
        if not isinstance(info, dict) or "dead_letter_reason" not in info:
            raise UnknownMessageError("resubmit takes a message read with receive_dead_letters()")
        topic, sub_name, delivery_id = (
            info.get("topic"),
            info.get("subscription"),
            info.get("delivery_id"),
        )
        if not (
            isinstance(topic, str) and isinstance(sub_name, str) and isinstance(delivery_id, str)
        ):
            raise UnknownMessageError("resubmit takes a message read with receive_dead_letters()")
        sub = await self._sub_state(topic, sub_name)
        if not await self.broker.resubmit(sub.queue, delivery_id):
            raise UnknownMessageError(
                f"no dead letter {message.message_id!r} in {topic}/{sub_name}"
                " (already resubmitted or purged?)"
            )
        size = info.get("size")
        self._ledger.add(sub.queue, int(size) if isinstance(size, int) else 0)

    async def purge_dead_letters(self, topic_name: str, subscription_name: str) -> int:
        """Delete the subscription's dead letters; return how many."""
        sub = await self._sub_state(topic_name, subscription_name)
        return await self.broker.purge_dead_letters(sub.queue)


# ------------------------------------------------------------------------------- the manager
