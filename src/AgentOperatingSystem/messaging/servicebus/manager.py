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
too. What to expect on our engines is in :mod:`.engine`; Azure is reached through
:mod:`.azure` (the ``azure`` extra).

Received messages
-----------------
:meth:`~ServiceBusManager.receive_from_subscription` yields :class:`~..types.Message` objects.
The sent dict is ``message.content``; Service Bus details are in
``message.metadata["aos.servicebus"]`` (see :func:`~.entities.application_properties`,
:func:`~.entities.servicebus_info`): ``properties`` (user properties), ``system`` (message id,
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
    EntityNotFoundError,
    InvalidMessageError,
)
from ..types import Message
from .backend import ServiceBusBackend
from .connect import backend_for
from .entities import (
    Duration,
    RuleProperties,
    SubscriptionProperties,
    SubscriptionRuntimeProperties,
    TopicProperties,
    TopicRuntimeProperties,
    servicebus_info,
)
from .outgoing import build_outgoing
from .receiver import SubscriptionReceiver
from .sqlfilter import Filter, filter_from_rule
from .validation import (
    positive_int,
    positive_seconds,
    valid_rule,
    valid_subscription,
    valid_topic,
    wait_seconds,
)

__all__ = ["ServiceBusManager"]


class ServiceBusManager:
    """Topics, subscriptions, rules and peek-lock messaging (spec section 3.5).

    ``connection_string`` is an engine URL (``memory://``, ``sqlite:///path.db``,
    ``nats://host:4222``) or an Azure Service Bus connection string (``Endpoint=sb://...``).
    ``broker`` (share an engine, e.g. a :class:`~..core.bus.MessageBus`'s) or ``backend`` (any
    :class:`ServiceBusBackend`) may be given instead. ``clock`` drives lock and TTL times on
    our engines (tests pass a :class:`~..clock.ManualClock`).
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
        if backend is None:
            backend = backend_for(
                connection_string,
                broker=broker,
                clock=clock,
                poll_interval=poll_interval,
                metadata_refresh_seconds=metadata_refresh_seconds,
            )
        self._backend: ServiceBusBackend = backend
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
        size = positive_seconds("max_size_in_mb", max_size_in_mb, allow_none=False)
        assert size is not None
        window = positive_seconds(
            "duplicate_detection_window_seconds",
            duplicate_detection_window_seconds,
            allow_none=False,
        )
        assert window is not None
        props = TopicProperties(
            name=valid_topic(topic_name),
            max_size_in_mb=size,
            default_message_ttl_seconds=positive_seconds(
                "default_message_ttl_seconds", default_message_ttl_seconds, allow_none=True
            ),
            requires_duplicate_detection=bool(requires_duplicate_detection),
            duplicate_detection_window_seconds=window,
        )
        return await (await self._ready()).create_topic(props)

    async def get_topic(self, topic_name: str) -> TopicProperties:
        """A topic's settings; :class:`EntityNotFoundError` when there is none."""
        return await (await self._ready()).get_topic(valid_topic(topic_name))

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
        await (await self._ready()).delete_topic(valid_topic(topic_name))

    async def get_topic_runtime_properties(self, topic_name: str) -> TopicRuntimeProperties:
        """The topic's size in bytes (as counted for ``max_size_in_mb``) and subscriptions."""
        return await (await self._ready()).get_topic_runtime_properties(valid_topic(topic_name))

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
        positive_int("max_delivery_count", max_delivery_count)
        lock = positive_seconds("lock_duration", lock_duration, allow_none=False)
        assert lock is not None
        props = SubscriptionProperties(
            topic_name=valid_topic(topic_name),
            name=valid_subscription(subscription_name),
            max_delivery_count=max_delivery_count,
            lock_duration=lock,
            dead_lettering_on_message_expiration=bool(dead_lettering_on_message_expiration),
            default_message_ttl_seconds=positive_seconds(
                "default_message_ttl_seconds", default_message_ttl_seconds, allow_none=True
            ),
        )
        return await (await self._ready()).create_subscription(props, rule_filter)

    async def get_subscription(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionProperties:
        """A subscription's settings; :class:`EntityNotFoundError` when there is none."""
        return await (await self._ready()).get_subscription(
            valid_topic(topic_name), valid_subscription(subscription_name)
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
        return await (await self._ready()).list_subscriptions(valid_topic(topic_name))

    async def delete_subscription(self, topic_name: str, subscription_name: str) -> None:
        """Delete a subscription with its messages and dead letters."""
        await (await self._ready()).delete_subscription(
            valid_topic(topic_name), valid_subscription(subscription_name)
        )

    async def get_subscription_runtime_properties(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionRuntimeProperties:
        """How many live and dead-lettered messages the subscription holds."""
        return await (await self._ready()).get_subscription_runtime_properties(
            valid_topic(topic_name), valid_subscription(subscription_name)
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
            valid_topic(topic_name),
            valid_subscription(subscription_name),
            valid_rule(rule_name),
            rule_filter,
        )

    async def remove_rule(self, topic_name: str, subscription_name: str, rule_name: str) -> None:
        """Remove a rule (``$Default`` included)."""
        await (await self._ready()).remove_rule(
            valid_topic(topic_name), valid_subscription(subscription_name), valid_rule(rule_name)
        )

    async def list_rules(self, topic_name: str, subscription_name: str) -> list[RuleProperties]:
        """A subscription's rules."""
        return await (await self._ready()).list_rules(
            valid_topic(topic_name), valid_subscription(subscription_name)
        )

    # -------------------------------------------------------------- messages

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
        outgoing = build_outgoing(
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
        topic = valid_topic(topic_name)
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
        wait = wait_seconds(max_wait_time)
        if max_messages is not None:
            positive_int("max_messages", max_messages)
        return SubscriptionReceiver(
            self, valid_topic(topic_name), valid_subscription(subscription_name), wait, max_messages
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
        positive_int("max_message_count", max_message_count)
        wait = wait_seconds(max_wait_time)
        backend = await self._ready()
        return await backend.receive(
            valid_topic(topic_name), valid_subscription(subscription_name), max_message_count, wait
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
        positive_int("max_messages", max_messages)
        return await (await self._ready()).dead_letters(
            valid_topic(topic_name), valid_subscription(subscription_name), max_messages
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
            valid_topic(topic_name), valid_subscription(subscription_name)
        )
