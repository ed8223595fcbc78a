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
from datetime import datetime
from typing import Any, Mapping

from ..brokers.base import Broker
from ..clock import Clock
from ..errors import (
    BrokerClosedError,
    ConfigurationError,
    EntityNotFoundError,
    InvalidMessageError,
)
from ..metadata import DLQ_ERROR, DLQ_REASON
from ..types import Message, MessageType
from .backend import (
    _SYSTEM_KEYS,
    DEFAULT_RULE_NAME,
    SERVICEBUS_KEY,
    Duration,
    OutgoingMessage,
    RuleProperties,
    Scalar,
    ServiceBusBackend,
    SubscriptionProperties,
    SubscriptionRuntimeProperties,
    TopicProperties,
    TopicRuntimeProperties,
    _is_scalar,
    _promoted,
    _rule,
    _seconds,
    _sub,
    _topic,
    application_properties,
    is_azure_connection_string,
    servicebus_info,
    subscription_queue,
)
from .engine import (
    EngineServiceBus,
)
from .sqlfilter import Filter, filter_from_rule

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
                from .azure import AzureServiceBus

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
