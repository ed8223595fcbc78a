"""Topics, subscriptions and SQL filter rules with Azure Service Bus semantics, on every engine.

``ServiceBusManager(connection_string=...)`` takes an engine URL (``memory://``,
``sqlite:///path.db``, ``nats://host:4222``) or an Azure Service Bus connection string
(``Endpoint=sb://...``) and offers the same API on each::

    service_bus = ServiceBusManager(connection_string="sqlite:///aos.db")
    await service_bus.create_topic("agent_tasks", max_size_in_mb=1024)
    await service_bus.create_subscription(
        "agent_tasks", "ceo_agent_tasks", filter_rule="agent_id = 'ceo_agent'"
    )
    await service_bus.send_to_topic(topic_name="agent_tasks", message={"agent_id": "ceo_agent"})
    async for message in service_bus.receive_from_subscription(
        topic_name="agent_tasks", subscription_name="ceo_agent_tasks"
    ):
        ...
        await service_bus.complete_message(message)

The manager starts itself on first use; ``start()``/``close()`` and ``async with`` are there
too. Azure is reached through :mod:`.azure_servicebus` (the ``azure`` extra).

Semantics on our engines (what a Service Bus user expects)
---------------------------------------------------------
* A **topic** fans each message out to its **subscriptions**. A subscription is a queue on
  the broker seam named ``_sb/<topic>/subscriptions/<subscription>``, so every engine
  (memory, SQLite, NATS) provides the storage, the peek-lock and the dead-letter queue.
* A subscription has **rules**; a message reaches it when ANY rule's filter matches
  (:mod:`.sqlfilter`: SQL filters, correlation filters, ``TrueFilter``/``FalseFilter``). The
  rule created with the subscription is ``$Default``: ``TrueFilter``, or ``filter_rule``.
  Filters are parsed once, when the rule is created, and evaluated in process at send time.
* Filterable **user properties** are the scalar top-level fields (str, int, float, bool) of
  the sent dict, plus the ``properties=`` given to :meth:`ServiceBusManager.send_to_topic`
  (which win). **System properties** (``sys.MessageId``, ``sys.CorrelationId``,
  ``sys.Label``/``sys.Subject``, ``sys.ContentType``, ``sys.To``, ``sys.ReplyTo``,
  ``sys.SessionId``) come from the message and keyword arguments.
* **Peek-lock**: a received message is locked for the subscription's ``lock_duration``;
  :meth:`~ServiceBusManager.complete_message` removes it,
  :meth:`~ServiceBusManager.abandon_message` makes it available again at once, and a message
  delivered ``max_delivery_count`` times goes to the subscription's dead-letter queue with
  reason ``MaxDeliveryCountExceeded`` (lock expiries count as deliveries, as on Azure). A
  message past its time to live (the smallest of the message's, the subscription's and the
  topic's) is never delivered: it is dead-lettered with reason ``TTLExpiredException`` when
  ``dead_lettering_on_message_expiration`` (the default here), else dropped.
* **Topic size** (``max_size_in_mb``): the manager counts the encoded bytes of every live
  message (available, scheduled or locked; dead letters are not counted) in each of the
  topic's subscriptions; a message that reaches three subscriptions counts three times. A
  send that would take the total over ``max_size_in_mb`` MiB raises
  :class:`~.errors.TopicFullError` and enqueues nothing. The count is kept by this manager
  exactly for what it sends and settles, and is reconciled with the engine's queue depths
  whenever topic metadata is refreshed (every ``metadata_refresh_seconds``): messages sent
  or settled by other processes are then estimated at the mean size of the counted ones.
* **Metadata** (topics, subscriptions, rules) is stored in the engine itself, through the
  seam's durable bindings, so it is as durable and as shared as the queues are. Each manager
  caches it for ``metadata_refresh_seconds`` (1 s): changes made by another process take up to
  that long to be seen; changes made through this manager are seen at once.
* **Duplicate detection** (``requires_duplicate_detection``) drops a message id sent again to
  the topic within ``duplicate_detection_window_seconds``; on NATS the engine's own
  ``dedup_window`` (600 s by default) bounds that window.
* Not implemented on our engines: rule actions (``SqlRuleAction``), sessions, auto-forwarding,
  auto-delete on idle, deferral.

Received messages
-----------------
:meth:`~ServiceBusManager.receive_from_subscription` yields :class:`~.types.Message` objects.
The sent dict is ``message.content``; Service Bus details are in
``message.metadata["aos.servicebus"]`` (see :func:`application_properties`,
:func:`servicebus_info`): ``properties`` (user properties), ``system`` (message id,
correlation id, subject, content type, ...), ``topic``, ``subscription``, ``lock_token``,
``delivery_count`` (1 on the first delivery), ``enqueued_at``, ``locked_until`` and, for dead
letters, ``dead_letter_reason``/``dead_letter_error_description`` (also under the bus's
``aos.dead_letter.reason``/``aos.dead_letter.error`` keys).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Mapping, Protocol, Union, runtime_checkable

from .brokers import open_broker
from .brokers.base import Broker, DeadLetter, Delivery, Envelope, Settlement
from .bus import DLQ_ERROR, DLQ_REASON
from .clock import SYSTEM_CLOCK, Clock
from .envelope import decode, encode
from .errors import (
    BrokerClosedError,
    ConfigurationError,
    DecodeError,
    DuplicateMessageError,
    EntityExistsError,
    EntityNotFoundError,
    FilterEvaluationError,
    InvalidMessageError,
    LockLostError,
    MessagingError,
    ServiceBusError,
    TopicFullError,
    UnknownMessageError,
)
from .sqlfilter import CorrelationFilter, Filter, filter_from_rule
from .types import Message, MessageType, new_message_id

__all__ = [
    "DEFAULT_RULE_NAME",
    "SERVICEBUS_KEY",
    "EngineServiceBus",
    "OutgoingMessage",
    "RuleProperties",
    "ServiceBusBackend",
    "ServiceBusManager",
    "SubscriptionProperties",
    "SubscriptionReceiver",
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


class SubscriptionReceiver:
    """``async for`` over a subscription's messages (peek-lock), one at a time.

    Ends after ``max_wait_time`` seconds without a message (when given), after
    ``max_messages`` messages (when given), when the manager closes, or when closed
    (``aclose()``, or leaving ``async with``). Each message must be settled with the
    manager's ``complete_message``/``abandon_message``/``dead_letter_message``.
    """

    def __init__(
        self,
        manager: ServiceBusManager,
        topic_name: str,
        subscription_name: str,
        max_wait_time: float | None,
        max_messages: int | None,
    ) -> None:
        self._manager = manager
        self.topic_name = topic_name
        self.subscription_name = subscription_name
        self.max_wait_time = max_wait_time
        self.max_messages = max_messages
        self.received = 0
        self._closed = False

    def __aiter__(self) -> SubscriptionReceiver:
        return self

    async def __anext__(self) -> Message:
        if self._closed or self._manager.closed:
            raise StopAsyncIteration
        if self.max_messages is not None and self.received >= self.max_messages:
            self._closed = True
            raise StopAsyncIteration
        backend = await self._manager._ready()
        messages = await backend.receive(
            self.topic_name, self.subscription_name, 1, self.max_wait_time
        )
        if not messages:
            self._closed = True
            raise StopAsyncIteration
        self.received += 1
        return messages[0]

    async def aclose(self) -> None:
        """Stop iterating."""
        self._closed = True

    async def __aenter__(self) -> SubscriptionReceiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ServiceBusManager:
    """Topics, subscriptions, rules and peek-lock messaging (spec section 3.5).

    ``connection_string`` is an engine URL (``memory://``, ``sqlite:///path.db``,
    ``nats://host:4222``) or an Azure Service Bus connection string (``Endpoint=sb://...``).
    ``broker`` (share an engine, e.g. a :class:`~.bus.MessageBus`'s) or ``backend`` (any
    :class:`ServiceBusBackend`) may be given instead. ``clock`` drives lock and TTL times on
    our engines (tests pass a :class:`~.clock.ManualClock`).
    """

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        broker: Broker | None = None,
        backend: ServiceBusBackend | None = None,
        clock: Clock | None = None,
        poll_interval: float = 0.5,
        metadata_refresh_seconds: float = 1.0,
    ) -> None:
        if backend is not None:
            self._backend: ServiceBusBackend = backend
        elif broker is not None:
            self._backend = EngineServiceBus(
                connection_string,
                broker=broker,
                clock=clock,
                poll_interval=poll_interval,
                metadata_refresh_seconds=metadata_refresh_seconds,
            )
        else:
            if not isinstance(connection_string, str) or not connection_string.strip():
                raise ConfigurationError(
                    "ServiceBusManager needs connection_string: an Azure Service Bus connection"
                    " string (Endpoint=sb://...) or an engine URL (memory://, sqlite:///path.db,"
                    " nats://host:4222); got " + repr(connection_string)
                )
            if is_azure_connection_string(connection_string):
                from .azure_servicebus import AzureServiceBus

                self._backend = AzureServiceBus(connection_string)
            else:
                scheme = connection_string.split(":", 1)[0].lower()
                if scheme not in ("memory", "sqlite", "nats", "tls"):
                    raise ConfigurationError(
                        f"unknown service bus connection string {connection_string!r}: use"
                        " Endpoint=sb://..., memory://, sqlite:///path.db or nats://host:4222"
                    )
                self._backend = EngineServiceBus(
                    connection_string,
                    clock=clock,
                    poll_interval=poll_interval,
                    metadata_refresh_seconds=metadata_refresh_seconds,
                )
        self._started = False
        self._closed = False
        self._start_lock = asyncio.Lock()

    # -------------------------------------------------------------- lifecycle

    @property
    def backend(self) -> ServiceBusBackend:
        """The backend: :class:`EngineServiceBus` or ``AzureServiceBus``."""
        return self._backend

    @property
    def kind(self) -> str:
        """``memory``, ``sqlite``, ``nats``, ``azure`` (or ``injected``)."""
        return self._backend.kind

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    async def start(self) -> ServiceBusManager:
        """Connect (also done on first use); idempotent."""
        await self._ready()
        return self

    async def _ready(self) -> ServiceBusBackend:
        if self._closed:
            raise BrokerClosedError("the ServiceBusManager is closed; create a new one")
        if not self._started:
            async with self._start_lock:
                if self._closed:
                    raise BrokerClosedError("the ServiceBusManager is closed; create a new one")
                if not self._started:
                    await self._backend.start()
                    self._started = True
        return self._backend

    async def close(self) -> None:
        """Close the backend; receivers end, unsettled messages are given back."""
        if self._closed:
            return
        self._closed = True
        async with self._start_lock:
            if self._started:
                await self._backend.close()

    aclose = close

    async def __aenter__(self) -> ServiceBusManager:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -------------------------------------------------------------- topics

    async def create_topic(
        self,
        topic_name: str,
        max_size_in_mb: float = 1024,
        default_message_ttl_seconds: Duration | None = None,
        *,
        requires_duplicate_detection: bool = False,
        duplicate_detection_window_seconds: Duration = 600.0,
    ) -> TopicProperties:
        """Create a topic. Raises :class:`EntityExistsError` when it exists.

        ``max_size_in_mb`` bounds the bytes of its live messages (:class:`TopicFullError`);
        ``default_message_ttl_seconds`` caps every message's time to live; with
        ``requires_duplicate_detection`` a message id sent again within
        ``duplicate_detection_window_seconds`` is dropped.
        """
        size = _seconds("max_size_in_mb", max_size_in_mb, allow_none=False)
        assert size is not None
        window = _seconds(
            "duplicate_detection_window_seconds",
            duplicate_detection_window_seconds,
            allow_none=False,
        )
        assert window is not None
        props = TopicProperties(
            name=_topic(topic_name),
            max_size_in_mb=size,
            default_message_ttl_seconds=_seconds(
                "default_message_ttl_seconds", default_message_ttl_seconds, allow_none=True
            ),
            requires_duplicate_detection=bool(requires_duplicate_detection),
            duplicate_detection_window_seconds=window,
        )
        return await (await self._ready()).create_topic(props)

    async def get_topic(self, topic_name: str) -> TopicProperties:
        """A topic's settings; :class:`EntityNotFoundError` when there is none."""
        return await (await self._ready()).get_topic(_topic(topic_name))

    async def topic_exists(self, topic_name: str) -> bool:
        """Whether the topic exists."""
        try:
            await self.get_topic(topic_name)
        except EntityNotFoundError:
            return False
        return True

    async def list_topics(self) -> list[TopicProperties]:
        """Every topic."""
        return await (await self._ready()).list_topics()

    async def delete_topic(self, topic_name: str) -> None:
        """Delete a topic with its subscriptions and their messages."""
        await (await self._ready()).delete_topic(_topic(topic_name))

    async def get_topic_runtime_properties(self, topic_name: str) -> TopicRuntimeProperties:
        """The topic's size in bytes (as counted for ``max_size_in_mb``) and subscriptions."""
        return await (await self._ready()).get_topic_runtime_properties(_topic(topic_name))

    # -------------------------------------------------------------- subscriptions

    async def create_subscription(
        self,
        topic_name: str,
        subscription_name: str,
        filter_rule: str | Filter | None = None,
        *,
        max_delivery_count: int = 10,
        lock_duration: Duration = 60,
        dead_lettering_on_message_expiration: bool = True,
        default_message_ttl_seconds: Duration | None = None,
    ) -> SubscriptionProperties:
        """Create a subscription whose ``$Default`` rule has ``filter_rule`` (SQL text, a
        :class:`~.sqlfilter.Filter`, or None for every message).

        Raises :class:`FilterSyntaxError` (nothing created) for a filter that does not parse,
        :class:`EntityNotFoundError` for a missing topic, :class:`EntityExistsError`.
        """
        rule_filter = filter_from_rule(filter_rule)
        if (
            isinstance(max_delivery_count, bool)
            or not isinstance(max_delivery_count, int)
            or max_delivery_count < 1
        ):
            raise ConfigurationError("max_delivery_count must be an int >= 1")
        lock = _seconds("lock_duration", lock_duration, allow_none=False)
        assert lock is not None
        props = SubscriptionProperties(
            topic_name=_topic(topic_name),
            name=_sub(subscription_name),
            max_delivery_count=max_delivery_count,
            lock_duration=lock,
            dead_lettering_on_message_expiration=bool(dead_lettering_on_message_expiration),
            default_message_ttl_seconds=_seconds(
                "default_message_ttl_seconds", default_message_ttl_seconds, allow_none=True
            ),
        )
        return await (await self._ready()).create_subscription(props, rule_filter)

    async def get_subscription(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionProperties:
        """A subscription's settings; :class:`EntityNotFoundError` when there is none."""
        return await (await self._ready()).get_subscription(
            _topic(topic_name), _sub(subscription_name)
        )

    async def subscription_exists(self, topic_name: str, subscription_name: str) -> bool:
        """Whether the subscription (and its topic) exists."""
        try:
            await self.get_subscription(topic_name, subscription_name)
        except EntityNotFoundError:
            return False
        return True

    async def list_subscriptions(self, topic_name: str) -> list[SubscriptionProperties]:
        """A topic's subscriptions."""
        return await (await self._ready()).list_subscriptions(_topic(topic_name))

    async def delete_subscription(self, topic_name: str, subscription_name: str) -> None:
        """Delete a subscription with its messages and dead letters."""
        await (await self._ready()).delete_subscription(_topic(topic_name), _sub(subscription_name))

    async def get_subscription_runtime_properties(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionRuntimeProperties:
        """How many live and dead-lettered messages the subscription holds."""
        return await (await self._ready()).get_subscription_runtime_properties(
            _topic(topic_name), _sub(subscription_name)
        )

    # -------------------------------------------------------------- rules

    async def add_rule(
        self,
        topic_name: str,
        subscription_name: str,
        rule_name: str,
        filter: str | Filter | None = None,
    ) -> RuleProperties:
        """Add a rule; a message reaches the subscription when ANY rule matches."""
        rule_filter = filter_from_rule(filter)
        return await (await self._ready()).add_rule(
            _topic(topic_name), _sub(subscription_name), _rule(rule_name), rule_filter
        )

    async def remove_rule(self, topic_name: str, subscription_name: str, rule_name: str) -> None:
        """Remove a rule (``$Default`` included)."""
        await (await self._ready()).remove_rule(
            _topic(topic_name), _sub(subscription_name), _rule(rule_name)
        )

    async def list_rules(self, topic_name: str, subscription_name: str) -> list[RuleProperties]:
        """A subscription's rules."""
        return await (await self._ready()).list_rules(_topic(topic_name), _sub(subscription_name))

    # -------------------------------------------------------------- messages

    @staticmethod
    def _outgoing(
        message: Mapping[str, Any] | Message,
        properties: Mapping[str, Any] | None,
        system_fields: Mapping[str, Any],
        time_to_live: Duration | None,
        scheduled_enqueue_time: datetime | None,
    ) -> OutgoingMessage:
        if isinstance(message, Message):
            base = message
            carried = application_properties(message)
        elif isinstance(message, Mapping):
            base = Message(message_type=MessageType.EVENT, content=dict(message))
            carried = {}
        else:
            raise InvalidMessageError(
                f"send_to_topic() takes a dict or a Message, not {type(message).__name__}"
            )
        promoted = _promoted(base.content)
        explicit: dict[str, Scalar] = {}
        for source in (carried, properties or {}):
            if not isinstance(source, Mapping):
                raise InvalidMessageError("properties must be a dict")
            for key, value in source.items():
                if not isinstance(key, str) or not key:
                    raise InvalidMessageError("property names must be non-empty strings")
                if not _is_scalar(value):
                    raise InvalidMessageError(
                        f"property {key!r} must be a str, int, float or bool, not {value!r}"
                    )
                if source is carried and key in promoted and promoted[key] == value:
                    continue  # it comes from the content again
                explicit[key] = value
        props: dict[str, Scalar] = {**promoted, **explicit}
        for key, value in system_fields.items():
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidMessageError(f"{key} must be a non-empty string")
        message_id = system_fields.get("message_id") or base.message_id
        correlation_id = system_fields.get("correlation_id") or base.correlation_id
        reply_to = system_fields.get("reply_to") or base.reply_to
        old_info = base.metadata.get(SERVICEBUS_KEY)
        old_system = old_info.get("system") if isinstance(old_info, dict) else None
        carried_system = old_system if isinstance(old_system, dict) else {}
        system_extra: dict[str, str] = {}
        for key in _SYSTEM_KEYS:
            value = system_fields.get(key) or carried_system.get(key)
            if key == "to" and value is None:
                value = base.recipient_id
            if key == "content_type" and value is None:
                value = "application/json"
            if isinstance(value, str) and value:
                system_extra[key] = value
        metadata = {
            k: v
            for k, v in base.metadata.items()
            if k not in (SERVICEBUS_KEY, DLQ_REASON, DLQ_ERROR)
        }
        # Only the properties that do not come from the content travel in the envelope.
        metadata[SERVICEBUS_KEY] = {"properties": explicit, "system": dict(system_extra)}
        msg = base.copy(
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
            metadata=metadata,
        )
        system: dict[str, str] = {"message_id": message_id, **system_extra}
        if correlation_id is not None:
            system["correlation_id"] = correlation_id
        if reply_to is not None:
            system["reply_to"] = reply_to
        ttl = _seconds("time_to_live", time_to_live, allow_none=True)
        if ttl is None and base.ttl is not None:
            ttl = float(base.ttl)
        if scheduled_enqueue_time is not None and (
            not isinstance(scheduled_enqueue_time, datetime)
            or scheduled_enqueue_time.tzinfo is None
        ):
            raise InvalidMessageError("scheduled_enqueue_time must be an aware datetime")
        return OutgoingMessage(msg, props, system, ttl, scheduled_enqueue_time)

    async def send_to_topic(
        self,
        topic_name: str,
        message: Mapping[str, Any] | Message,
        *,
        properties: Mapping[str, Any] | None = None,
        application_properties: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        subject: str | None = None,
        content_type: str | None = None,
        reply_to: str | None = None,
        to: str | None = None,
        session_id: str | None = None,
        time_to_live: Duration | None = None,
        scheduled_enqueue_time: datetime | None = None,
    ) -> str:
        """Send a dict (the content) or a :class:`Message` to a topic; return its message id.

        Each subscription whose rules match gets a copy; a message no subscription wants is
        dropped, as on Azure. Scalar top-level fields of the dict are user properties, and so
        are ``properties``/``application_properties`` (which win). Raises
        :class:`EntityNotFoundError` for a missing topic and :class:`TopicFullError`.
        """
        merged: dict[str, Any] = {}
        for source in (application_properties, properties):
            if source is not None:
                if not isinstance(source, Mapping):
                    raise InvalidMessageError("properties must be a dict")
                merged.update(source)
        outgoing = self._outgoing(
            message,
            merged,
            {
                "message_id": message_id,
                "correlation_id": correlation_id,
                "subject": subject,
                "content_type": content_type,
                "reply_to": reply_to,
                "to": to,
                "session_id": session_id,
            },
            time_to_live,
            scheduled_enqueue_time,
        )
        topic = _topic(topic_name)
        await (await self._ready()).send(topic, outgoing)
        return outgoing.message.message_id

    def receive_from_subscription(
        self,
        topic_name: str,
        subscription_name: str,
        max_wait_time: float | None = None,
        max_messages: int | None = None,
    ) -> SubscriptionReceiver:
        """Iterate over a subscription's messages (peek-lock): ``async for message in ...``.

        Without ``max_wait_time`` the iteration runs until the manager closes or the
        iterator is closed; with it, it ends after that many seconds without a message.
        """
        if max_wait_time is not None:
            if (
                isinstance(max_wait_time, bool)
                or not isinstance(max_wait_time, (int, float))
                or max_wait_time < 0
            ):
                raise ConfigurationError("max_wait_time must be a number of seconds >= 0")
        if max_messages is not None and (
            isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1
        ):
            raise ConfigurationError("max_messages must be an int >= 1")
        return SubscriptionReceiver(
            self,
            _topic(topic_name),
            _sub(subscription_name),
            None if max_wait_time is None else float(max_wait_time),
            max_messages,
        )

    async def receive_messages(
        self,
        topic_name: str,
        subscription_name: str,
        max_message_count: int = 1,
        max_wait_time: float | None = None,
    ) -> list[Message]:
        """Lock and return up to ``max_message_count`` messages, waiting up to
        ``max_wait_time`` seconds for the first (None: until one comes or the manager
        closes); [] when none came."""
        if (
            isinstance(max_message_count, bool)
            or not isinstance(max_message_count, int)
            or max_message_count < 1
        ):
            raise ConfigurationError("max_message_count must be an int >= 1")
        if max_wait_time is not None and (
            isinstance(max_wait_time, bool)
            or not isinstance(max_wait_time, (int, float))
            or max_wait_time < 0
        ):
            raise ConfigurationError("max_wait_time must be a number of seconds >= 0")
        backend = await self._ready()
        return await backend.receive(
            _topic(topic_name),
            _sub(subscription_name),
            max_message_count,
            None if max_wait_time is None else float(max_wait_time),
        )

    async def complete_message(self, message: Message) -> None:
        """Settle a received message as done: it leaves the subscription.

        Raises :class:`LockLostError` when its lock expired first (it will be delivered
        again) and :class:`UnknownMessageError` when it holds no lock (already settled)."""
        await (await self._ready()).complete(message)

    async def abandon_message(self, message: Message) -> None:
        """Give a received message back: it is delivered again, or, once it has been
        delivered ``max_delivery_count`` times, dead-lettered (``MaxDeliveryCountExceeded``)."""
        await (await self._ready()).abandon(message)

    async def dead_letter_message(
        self,
        message: Message,
        reason: str | None = None,
        error_description: str | None = None,
    ) -> None:
        """Move a received message to its subscription's dead-letter queue."""
        for name, value in (("reason", reason), ("error_description", error_description)):
            if value is not None and not isinstance(value, str):
                raise InvalidMessageError(f"{name} must be a string")
        await (await self._ready()).dead_letter(message, reason, error_description)

    async def renew_message_lock(self, message: Message) -> datetime:
        """Extend a received message's lock; returns when it now expires (aware UTC)."""
        return await (await self._ready()).renew_lock(message)

    async def receive_dead_letters(
        self, topic_name: str, subscription_name: str, max_messages: int = 100
    ) -> list[Message]:
        """Read (without removing or locking) the subscription's dead-letter queue, oldest
        first. Each message carries ``aos.dead_letter.reason``/``aos.dead_letter.error`` in
        its metadata (and ``dead_letter_reason`` in :func:`servicebus_info`)."""
        if isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1:
            raise ConfigurationError("max_messages must be an int >= 1")
        return await (await self._ready()).dead_letters(
            _topic(topic_name), _sub(subscription_name), max_messages
        )

    async def resubmit_dead_letter(self, message: Message) -> None:
        """Put a dead letter (from :meth:`receive_dead_letters`) back into circulation."""
        await (await self._ready()).resubmit(message)

    async def resubmit_dead_letters(self, topic_name: str, subscription_name: str) -> int:
        """Resubmit the subscription's dead letters (those there when called); return how
        many."""
        seen: set[str] = set()
        while True:
            batch = await self.receive_dead_letters(topic_name, subscription_name, 100)
            fresh = [m for m in batch if servicebus_info(m).get("delivery_id") not in seen]
            if not fresh:
                return len(seen)
            for message in fresh:
                seen.add(str(servicebus_info(message).get("delivery_id")))
                await self.resubmit_dead_letter(message)

    async def purge_dead_letters(self, topic_name: str, subscription_name: str) -> int:
        """Delete the subscription's dead letters; return how many."""
        return await (await self._ready()).purge_dead_letters(
            _topic(topic_name), _sub(subscription_name)
        )
