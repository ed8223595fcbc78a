"""The Azure Service Bus backend of :class:`~.servicebus_manager.ServiceBusManager`.

Built on the official ``azure-servicebus`` SDK (the ``azure`` extra), async flavour:
``azure.servicebus.aio.ServiceBusClient`` for messages (AMQP) and
``azure.servicebus.aio.management.ServiceBusAdministrationClient`` for topics, subscriptions
and rules (HTTPS). Both are created from the connection string on start and closed on close.

Mapping
-------
* ``send_to_topic``: a ``ServiceBusMessage`` whose body is the JSON of the content
  (``content_type`` ``application/json``), with ``message_id``, ``correlation_id``,
  ``reply_to``, ``to`` (the message's ``recipient_id``), ``subject``, ``session_id``,
  ``time_to_live`` and ``scheduled_enqueue_time_utc``; the user properties (scalar fields of
  the dict plus ``properties=``) become ``application_properties``, so Azure's own SQL filters
  see them. An AOS :class:`~.types.Message` with a non-default sender, type or priority, or
  with metadata, also carries ``aos-sender``, ``aos-type``, ``aos-priority`` and
  ``aos-metadata`` application properties (names a SQL filter would have to bracket).
* A subscription's filter: the subscription is created, its automatic ``$Default`` rule
  (``TrueFilter``) is deleted and a ``$Default`` rule with the filter is created
  (``SqlRuleFilter``, ``CorrelationRuleFilter`` or ``FalseRuleFilter``). If that fails the new
  subscription is deleted again. ``add_rule``/``remove_rule``/``list_rules`` map to
  ``create_rule``/``delete_rule``/``list_rules``.
* Receiving is peek-lock (``receive_messages`` on one receiver per subscription, kept open
  until close); complete/abandon/dead-letter/renew go through the receiver that received the
  message, so they must happen on the same manager. Azure itself enforces
  ``max_delivery_count``, TTL and dead-lettering. ``delivery_count`` is reported as Azure's
  .NET SDK does (1 on the first delivery; the AMQP header holds one less).
* Received ``application_properties`` arrive with ``bytes`` keys and string values (a
  property of the AMQP layer); they are decoded to ``str``.
* Dead letters are read with ``peek_messages`` on the ``deadletter`` sub-queue. Azure has no
  "resubmit": :meth:`AzureServiceBus.resubmit` receives the dead letter, sends a copy to the
  topic and completes the dead letter. The copy goes through the topic's rules again, so
  **every** subscription whose rules match receives it, not only the one it came from.
  ``purge_dead_letters`` drains the sub-queue in receive-and-delete mode.
* Errors: ``azure.core.exceptions`` (``ResourceExistsError``/``ResourceNotFoundError``, or a
  plain ``HttpResponseError`` carrying 409/404, which is what the SDK raises when the service
  sends an error body) and ``azure.servicebus.exceptions`` are translated into ours
  (``EntityExistsError``, ``EntityNotFoundError``, ``TopicFullError`` for quota exceeded,
  ``LockLostError``, ``PermissionDeniedError``, ``BrokerUnavailableError``, ...) with
  ``raise ... from``.
* ``max_size_in_mb`` must be a whole number of megabytes (Azure accepts 1024-5120 on the
  Standard tier, up to 81920 on Premium).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Iterator, Mapping

from ..errors import (
    BrokerClosedError,
    BrokerUnavailableError,
    ConfigurationError,
    EntityExistsError,
    EntityNotFoundError,
    FilterEvaluationError,
    FilterSyntaxError,
    LockLostError,
    MessageTooLargeError,
    MessagingError,
    MissingExtraError,
    PermissionDeniedError,
    ServiceBusError,
    TopicFullError,
    UnknownMessageError,
)
from ..metadata import DLQ_ERROR, DLQ_REASON
from ..types import Message, MessagePriority, MessageType, new_message_id
from .backend import (
    DEFAULT_RULE_NAME,
    SERVICEBUS_KEY,
    OutgoingMessage,
    RuleProperties,
    SubscriptionProperties,
    SubscriptionRuntimeProperties,
    TopicProperties,
    TopicRuntimeProperties,
)
from .sqlfilter import (
    CorrelationFilter,
    FalseFilter,
    Filter,
    SqlFilter,
    TrueFilter,
    filter_from_rule,
)

try:
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.servicebus import (
        ServiceBusMessage,
        ServiceBusReceivedMessage,
        ServiceBusReceiveMode,
        ServiceBusSubQueue,
    )
    from azure.servicebus import exceptions as sb_errors
    from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
    from azure.servicebus.aio.management import ServiceBusAdministrationClient
    from azure.servicebus.management import (
        CorrelationRuleFilter,
        FalseRuleFilter,
        SqlRuleFilter,
        TrueRuleFilter,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("Azure Service Bus", "azure") from exc

__all__ = ["AzureServiceBus", "UnparsedSqlFilter", "translate_azure_error"]

log = logging.getLogger("aos.messaging.azure")

#: Application properties Azure adds to dead letters; not user properties.
_DLQ_PROPERTIES = ("DeadLetterReason", "DeadLetterErrorDescription")
_AOS_SENDER = "aos-sender"
_AOS_TYPE = "aos-type"
_AOS_PRIORITY = "aos-priority"
_AOS_METADATA = "aos-metadata"
_AOS_PROPERTIES = (_AOS_SENDER, _AOS_TYPE, _AOS_PRIORITY, _AOS_METADATA)
#: Azure reports "never expires" as TimeSpan.MaxValue (about 29 227 years).
_NEVER = timedelta(days=3650 * 1000)


class UnparsedSqlFilter(Filter):
    """A SQL filter read from Azure that this library's parser does not accept (for example
    one with ``@parameters``). It is kept as text; evaluating it in process fails."""

    __slots__ = ("expression",)

    def __init__(self, expression: str) -> None:
        self.expression = expression

    def evaluate(
        self, properties: Mapping[str, Any], system: Mapping[str, Any] | None = None
    ) -> bool:
        """Always raises :class:`FilterEvaluationError` (Azure evaluates it, not us)."""
        raise FilterEvaluationError(f"filter {self.expression!r} is evaluated by Azure only")

    def to_sql(self) -> str:
        """The expression as Azure holds it."""
        return self.expression

    def __repr__(self) -> str:
        return f"UnparsedSqlFilter({self.expression!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnparsedSqlFilter) and other.expression == self.expression

    def __hash__(self) -> int:
        return hash(self.expression)


def translate_azure_error(exc: BaseException, what: str) -> MessagingError:
    """Our error for an exception of the Azure SDK (``what`` names the operation/entity)."""
    if isinstance(exc, sb_errors.MessageAlreadySettled):
        return UnknownMessageError(f"{what}: the message was already settled")
    if isinstance(exc, ResourceExistsError) or isinstance(
        exc, sb_errors.MessagingEntityAlreadyExistsError
    ):
        return EntityExistsError(f"{what}: already exists")
    if isinstance(exc, ResourceNotFoundError) or isinstance(
        exc, sb_errors.MessagingEntityNotFoundError
    ):
        return EntityNotFoundError(f"{what}: not found")
    if isinstance(exc, ClientAuthenticationError) or isinstance(
        exc, (sb_errors.ServiceBusAuthenticationError, sb_errors.ServiceBusAuthorizationError)
    ):
        return PermissionDeniedError(f"{what}: Azure refused the credentials: {exc}")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        if status == 409:
            return EntityExistsError(f"{what}: already exists")
        if status == 404:
            return EntityNotFoundError(f"{what}: not found")
        if status in (401, 403):
            return PermissionDeniedError(f"{what}: Azure refused the request ({status})")
        if status is not None and (status == 429 or status >= 500):
            return BrokerUnavailableError(f"{what}: Azure is unavailable ({status}): {exc}")
        return ServiceBusError(f"{what}: Azure answered {status}: {exc}")
    if isinstance(exc, sb_errors.ServiceBusQuotaExceededError):
        return TopicFullError(f"{what}: quota exceeded: {exc}")
    if isinstance(exc, sb_errors.MessageLockLostError):
        return LockLostError(f"{what}: the message lock was lost (it will be delivered again)")
    if isinstance(exc, sb_errors.MessageSizeExceededError):
        return MessageTooLargeError(f"{what}: {exc}")
    if isinstance(
        exc,
        (
            sb_errors.ServiceBusConnectionError,
            sb_errors.ServiceBusCommunicationError,
            sb_errors.ServiceBusServerBusyError,
            sb_errors.OperationTimeoutError,
            ServiceRequestError,
            ServiceResponseError,
        ),
    ):
        return BrokerUnavailableError(f"{what}: cannot reach Azure Service Bus: {exc}")
    return ServiceBusError(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _azure(what: str) -> Iterator[None]:
    try:
        yield
    except MessagingError:
        raise
    except (AzureError, sb_errors.MessageAlreadySettled) as exc:
        raise translate_azure_error(exc, what) from exc


def _text(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode()
    return value


def _str_or_none(value: Any) -> str | None:
    value = _text(value)
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _duration(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):  # ISO 8601 duration the SDK could not parse
        return None
    if isinstance(value, timedelta):
        return None if value >= _NEVER else value.total_seconds()
    return None


def _to_azure_filter(rule_filter: Filter) -> SqlRuleFilter | CorrelationRuleFilter:
    if isinstance(rule_filter, TrueFilter):
        return TrueRuleFilter()
    if isinstance(rule_filter, FalseFilter):
        return FalseRuleFilter()
    if isinstance(rule_filter, CorrelationFilter):
        values = rule_filter.system_values
        return CorrelationRuleFilter(
            correlation_id=values.get("correlation_id"),
            message_id=values.get("message_id"),
            to=values.get("to"),
            reply_to=values.get("reply_to"),
            label=values.get("subject"),
            session_id=values.get("session_id"),
            reply_to_session_id=values.get("reply_to_session_id"),
            content_type=values.get("content_type"),
            properties=dict(rule_filter.properties) or None,
        )
    if isinstance(rule_filter, (SqlFilter, UnparsedSqlFilter)):
        return SqlRuleFilter(rule_filter.expression)
    return SqlRuleFilter(rule_filter.to_sql())


def _from_azure_filter(value: Any) -> Filter:
    if isinstance(value, TrueRuleFilter):
        return TrueFilter()
    if isinstance(value, FalseRuleFilter):
        return FalseFilter()
    if isinstance(value, CorrelationRuleFilter):
        fields: dict[str, Any] = {
            "correlation_id": _str_or_none(value.correlation_id),
            "message_id": _str_or_none(value.message_id),
            "to": _str_or_none(value.to),
            "reply_to": _str_or_none(value.reply_to),
            "subject": _str_or_none(value.label),
            "session_id": _str_or_none(value.session_id),
            "reply_to_session_id": _str_or_none(value.reply_to_session_id),
            "content_type": _str_or_none(value.content_type),
        }
        props = {str(_text(k)): _text(v) for k, v in (value.properties or {}).items()}
        try:
            return CorrelationFilter(
                **{k: v for k, v in fields.items() if v is not None},
                properties=props or None,
            )
        except ConfigurationError:
            return FalseFilter()
    if isinstance(value, SqlRuleFilter):
        expression = value.sql_expression or "1=1"
        try:
            return filter_from_rule(expression)
        except FilterSyntaxError:
            return UnparsedSqlFilter(expression)
    return UnparsedSqlFilter(str(value))


@dataclass(slots=True)
class _Held:
    receiver: ServiceBusReceiver
    message: ServiceBusReceivedMessage
    topic: str
    subscription: str


class AzureServiceBus:
    """The Azure backend (see the module docstring).

    ``client``/``admin_client`` may be given (already built ``ServiceBusClient`` /
    ``ServiceBusAdministrationClient`` objects, or stand-ins with the same methods); else they
    are created from ``connection_string`` with ``client_kwargs``/``admin_kwargs`` (e.g.
    ``transport=`` for the administration client). Given clients are closed on close too.
    """

    kind = "azure"

    def __init__(
        self,
        connection_string: str,
        *,
        client: ServiceBusClient | None = None,
        admin_client: ServiceBusAdministrationClient | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        admin_kwargs: Mapping[str, Any] | None = None,
        receive_chunk_seconds: float = 5.0,
        dead_letter_wait_seconds: float = 2.0,
    ) -> None:
        self.connection_string = connection_string
        self._client: ServiceBusClient | None = client
        self._admin: ServiceBusAdministrationClient | None = admin_client
        self._client_kwargs = dict(client_kwargs or {})
        self._admin_kwargs = dict(admin_kwargs or {})
        self.receive_chunk_seconds = receive_chunk_seconds
        self.dead_letter_wait_seconds = dead_letter_wait_seconds
        self._senders: dict[str, ServiceBusSender] = {}
        self._receivers: dict[tuple[str, str, bool], ServiceBusReceiver] = {}
        self._receive_locks: dict[tuple[str, str, bool], asyncio.Lock] = {}
        self._held: dict[str, _Held] = {}
        self._closing = asyncio.Event()
        self._closed = False

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Create the SDK clients (no network traffic happens until first use)."""
        try:
            if self._client is None:
                self._client = ServiceBusClient.from_connection_string(
                    self.connection_string, **self._client_kwargs
                )
            if self._admin is None:
                self._admin = ServiceBusAdministrationClient.from_connection_string(
                    self.connection_string, **self._admin_kwargs
                )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"invalid Azure Service Bus connection string: {exc}") from exc

    async def close(self) -> None:
        """Close every receiver, sender and both clients."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._held.clear()
        handlers = [*self._receivers.values(), *self._senders.values()]
        self._receivers.clear()
        self._senders.clear()
        for handler in handlers:
            with contextlib.suppress(Exception):
                await handler.close()
        for client in (self._client, self._admin):
            if client is not None:
                try:
                    await client.close()
                except Exception:
                    log.warning("closing an Azure client failed", exc_info=True)

    def _check(self) -> None:
        if self._closed or self._client is None or self._admin is None:
            raise BrokerClosedError("the Azure service bus is not started or already closed")

    @property
    def client(self) -> ServiceBusClient:
        """The messaging client (after :meth:`start`)."""
        self._check()
        assert self._client is not None
        return self._client

    @property
    def admin(self) -> ServiceBusAdministrationClient:
        """The administration client (after :meth:`start`)."""
        self._check()
        assert self._admin is not None
        return self._admin

    # -------------------------------------------------------------- topics

    @staticmethod
    def _topic(value: Any) -> TopicProperties:
        size = value.max_size_in_megabytes
        window = _seconds(value.duplicate_detection_history_time_window)
        return TopicProperties(
            name=str(value.name),
            max_size_in_mb=float(size) if size is not None else 1024.0,
            default_message_ttl_seconds=_seconds(value.default_message_time_to_live),
            requires_duplicate_detection=bool(value.requires_duplicate_detection),
            duplicate_detection_window_seconds=window if window is not None else 600.0,
        )

    async def create_topic(self, props: TopicProperties) -> TopicProperties:
        """``create_topic`` on the administration client."""
        self._check()
        if props.max_size_in_mb != int(props.max_size_in_mb):
            raise ConfigurationError("on Azure, max_size_in_mb must be a whole number of MB")
        kwargs: dict[str, Any] = {"max_size_in_megabytes": int(props.max_size_in_mb)}
        if props.default_message_ttl_seconds is not None:
            kwargs["default_message_time_to_live"] = _duration(props.default_message_ttl_seconds)
        if props.requires_duplicate_detection:
            kwargs["requires_duplicate_detection"] = True
            kwargs["duplicate_detection_history_time_window"] = _duration(
                props.duplicate_detection_window_seconds
            )
        with _azure(f"create topic {props.name!r}"):
            created = await self.admin.create_topic(props.name, **kwargs)
        return self._topic(created)

    async def get_topic(self, topic_name: str) -> TopicProperties:
        """``get_topic``."""
        self._check()
        with _azure(f"topic {topic_name!r}"):
            return self._topic(await self.admin.get_topic(topic_name))

    async def list_topics(self) -> list[TopicProperties]:
        """``list_topics``, by name."""
        self._check()
        out: list[TopicProperties] = []
        with _azure("list topics"):
            async for item in self.admin.list_topics():
                out.append(self._topic(item))
        return sorted(out, key=lambda t: t.name)

    async def delete_topic(self, topic_name: str) -> None:
        """``delete_topic`` (Azure deletes its subscriptions and messages)."""
        self._check()
        await self._drop_handlers(topic_name, None)
        with _azure(f"delete topic {topic_name!r}"):
            await self.admin.delete_topic(topic_name)

    async def get_topic_runtime_properties(self, topic_name: str) -> TopicRuntimeProperties:
        """``get_topic_runtime_properties``: Azure's own size in bytes."""
        self._check()
        with _azure(f"topic {topic_name!r}"):
            info = await self.admin.get_topic_runtime_properties(topic_name)
        return TopicRuntimeProperties(
            topic_name, int(info.size_in_bytes or 0), int(info.subscription_count or 0)
        )

    # -------------------------------------------------------------- subscriptions

    @staticmethod
    def _subscription(topic_name: str, value: Any) -> SubscriptionProperties:
        lock = _seconds(value.lock_duration)
        count = value.max_delivery_count
        return SubscriptionProperties(
            topic_name=topic_name,
            name=str(value.name),
            max_delivery_count=int(count) if count is not None else 10,
            lock_duration=lock if lock is not None else 60.0,
            dead_lettering_on_message_expiration=bool(value.dead_lettering_on_message_expiration),
            default_message_ttl_seconds=_seconds(value.default_message_time_to_live),
        )

    async def create_subscription(
        self, props: SubscriptionProperties, default_filter: Filter
    ) -> SubscriptionProperties:
        """``create_subscription``; a filter replaces the automatic ``$Default`` rule."""
        self._check()
        topic, name = props.topic_name, props.name
        kwargs: dict[str, Any] = {
            "max_delivery_count": props.max_delivery_count,
            "lock_duration": _duration(props.lock_duration),
            "dead_lettering_on_message_expiration": props.dead_lettering_on_message_expiration,
        }
        if props.default_message_ttl_seconds is not None:
            kwargs["default_message_time_to_live"] = _duration(props.default_message_ttl_seconds)
        with _azure(f"create subscription {topic}/{name}"):
            created = await self.admin.create_subscription(topic, name, **kwargs)
        if not isinstance(default_filter, TrueFilter):
            try:
                with _azure(f"set the filter of {topic}/{name}"):
                    await self.admin.delete_rule(topic, name, DEFAULT_RULE_NAME)
                    await self.admin.create_rule(
                        topic, name, DEFAULT_RULE_NAME, filter=_to_azure_filter(default_filter)
                    )
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.admin.delete_subscription(topic, name)
                raise
        return self._subscription(topic, created)

    async def get_subscription(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionProperties:
        """``get_subscription``."""
        self._check()
        with _azure(f"subscription {topic_name}/{subscription_name}"):
            value = await self.admin.get_subscription(topic_name, subscription_name)
        return self._subscription(topic_name, value)

    async def list_subscriptions(self, topic_name: str) -> list[SubscriptionProperties]:
        """``list_subscriptions``, by name."""
        self._check()
        out: list[SubscriptionProperties] = []
        with _azure(f"list subscriptions of {topic_name!r}"):
            async for item in self.admin.list_subscriptions(topic_name):
                out.append(self._subscription(topic_name, item))
        return sorted(out, key=lambda s: s.name)

    async def delete_subscription(self, topic_name: str, subscription_name: str) -> None:
        """``delete_subscription``."""
        self._check()
        await self._drop_handlers(topic_name, subscription_name)
        with _azure(f"delete subscription {topic_name}/{subscription_name}"):
            await self.admin.delete_subscription(topic_name, subscription_name)

    async def get_subscription_runtime_properties(
        self, topic_name: str, subscription_name: str
    ) -> SubscriptionRuntimeProperties:
        """Live messages (the total minus dead letters, so scheduled ones count), and dead
        letters."""
        self._check()
        with _azure(f"subscription {topic_name}/{subscription_name}"):
            info = await self.admin.get_subscription_runtime_properties(
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
        self._check()
        with _azure(f"create rule {rule_name!r} on {topic_name}/{subscription_name}"):
            await self.admin.create_rule(
                topic_name, subscription_name, rule_name, filter=_to_azure_filter(rule_filter)
            )
        return RuleProperties(rule_name, rule_filter)

    async def remove_rule(self, topic_name: str, subscription_name: str, rule_name: str) -> None:
        """``delete_rule``."""
        self._check()
        with _azure(f"rule {rule_name!r} of {topic_name}/{subscription_name}"):
            await self.admin.delete_rule(topic_name, subscription_name, rule_name)

    async def list_rules(self, topic_name: str, subscription_name: str) -> list[RuleProperties]:
        """``list_rules``, by name."""
        self._check()
        out: list[RuleProperties] = []
        with _azure(f"list rules of {topic_name}/{subscription_name}"):
            async for item in self.admin.list_rules(topic_name, subscription_name):
                out.append(RuleProperties(str(item.name), _from_azure_filter(item.filter)))
        return sorted(out, key=lambda r: r.name)

    # -------------------------------------------------------------- sending

    def _sender(self, topic_name: str) -> ServiceBusSender:
        sender = self._senders.get(topic_name)
        if sender is None:
            with _azure(f"open a sender for {topic_name!r}"):
                sender = self.client.get_topic_sender(topic_name=topic_name)
            self._senders[topic_name] = sender
        return sender

    @staticmethod
    def _outgoing(outgoing: OutgoingMessage) -> ServiceBusMessage:
        msg = outgoing.message
        props: dict[str | bytes, Any] = {k: v for k, v in outgoing.properties.items()}
        if msg.sender_id != "anonymous":
            props[_AOS_SENDER] = msg.sender_id
        if msg.message_type is not MessageType.EVENT:
            props[_AOS_TYPE] = msg.message_type.value
        if msg.priority is not MessagePriority.NORMAL:
            props[_AOS_PRIORITY] = msg.priority.value
        extra = {k: v for k, v in msg.metadata.items() if k != SERVICEBUS_KEY}
        if extra:
            props[_AOS_METADATA] = json.dumps(extra, separators=(",", ":"))
        system = outgoing.system
        try:
            body = json.dumps(msg.content, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            from ..errors import InvalidMessageError

            raise InvalidMessageError(f"message content is not JSON-serialisable: {exc}") from exc
        return ServiceBusMessage(
            body,
            application_properties=props,
            message_id=system.get("message_id"),
            correlation_id=system.get("correlation_id"),
            reply_to=system.get("reply_to"),
            to=system.get("to"),
            subject=system.get("subject"),
            session_id=system.get("session_id"),
            content_type=system.get("content_type", "application/json"),
            time_to_live=_duration(outgoing.time_to_live),
            scheduled_enqueue_time_utc=outgoing.scheduled_enqueue_time,
        )

    async def send(self, topic_name: str, outgoing: OutgoingMessage) -> None:
        """``send_messages`` on the topic's sender (opened once, kept until close)."""
        self._check()
        sb_message = self._outgoing(outgoing)
        sender = self._sender(topic_name)
        with _azure(f"send to topic {topic_name!r}"):
            await sender.send_messages(sb_message)

    # -------------------------------------------------------------- receiving

    def _receiver(self, topic: str, sub: str, dead_letter: bool = False) -> ServiceBusReceiver:
        key = (topic, sub, dead_letter)
        receiver = self._receivers.get(key)
        if receiver is None:
            with _azure(f"open a receiver for {topic}/{sub}"):
                if dead_letter:
                    receiver = self.client.get_subscription_receiver(
                        topic_name=topic,
                        subscription_name=sub,
                        sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                        receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
                    )
                else:
                    receiver = self.client.get_subscription_receiver(
                        topic_name=topic,
                        subscription_name=sub,
                        receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
                        prefetch_count=0,
                    )
            self._receivers[key] = receiver
        return receiver

    def _lock(self, topic: str, sub: str, dead_letter: bool = False) -> asyncio.Lock:
        return self._receive_locks.setdefault((topic, sub, dead_letter), asyncio.Lock())

    async def _drop_handlers(self, topic: str, sub: str | None) -> None:
        for key in [k for k in self._receivers if k[0] == topic and (sub is None or k[1] == sub)]:
            receiver = self._receivers.pop(key)
            with contextlib.suppress(Exception):
                await receiver.close()
        if sub is None:
            sender = self._senders.pop(topic, None)
            if sender is not None:
                with contextlib.suppress(Exception):
                    await sender.close()

    @staticmethod
    def _content(sb_message: Any) -> dict[str, Any]:
        body_type = str(getattr(sb_message, "body_type", "data")).lower()
        body = sb_message.body
        if "value" in body_type:
            value = _text(body)
            if isinstance(value, dict):
                return {str(_text(k)): _text(v) for k, v in value.items()}
            return {"value": value}
        if "sequence" in body_type:
            return {"value": [_text(item) for item in body]}
        raw = b"".join(bytes(part) for part in body) if not isinstance(body, bytes) else body
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"body_base64": base64.b64encode(raw).decode()}
        try:
            parsed = json.loads(text)
        except ValueError:
            return {"body": text}
        return parsed if isinstance(parsed, dict) else {"value": parsed}

    def _message(self, sb_message: Any, topic: str, sub: str, *, dead: bool) -> Message:
        raw_props = sb_message.application_properties or {}
        props: dict[str, Any] = {str(_text(k)): _text(v) for k, v in raw_props.items()}
        sender = props.pop(_AOS_SENDER, None)
        type_name = props.pop(_AOS_TYPE, None)
        priority = props.pop(_AOS_PRIORITY, None)
        meta_text = props.pop(_AOS_METADATA, None)
        for key in _DLQ_PROPERTIES:
            props.pop(key, None)
        metadata: dict[str, Any] = {}
        if isinstance(meta_text, str):
            with contextlib.suppress(ValueError):
                loaded = json.loads(meta_text)
                if isinstance(loaded, dict):
                    metadata.update(loaded)
        try:
            message_type = MessageType.coerce(type_name) if type_name else MessageType.EVENT
        except MessagingError:
            message_type = MessageType.EVENT
        try:
            prio = MessagePriority.coerce(priority) if priority is not None else None
        except MessagingError:
            prio = None
        enqueued = sb_message.enqueued_time_utc
        locked = None if dead else sb_message.locked_until_utc
        count = sb_message.delivery_count
        system = {
            key: value
            for key, value in {
                "subject": _str_or_none(sb_message.subject),
                "content_type": _str_or_none(sb_message.content_type),
                "to": _str_or_none(sb_message.to),
                "session_id": _str_or_none(sb_message.session_id),
            }.items()
            if value is not None
        }
        token = None if dead else _str_or_none(sb_message.lock_token)
        info: dict[str, Any] = {
            "properties": props,
            "system": system,
            "topic": topic,
            "subscription": sub,
            "lock_token": token,
            "delivery_id": _str_or_none(sb_message.sequence_number),
            "delivery_count": (int(count) + 1) if count is not None else None,
            "enqueued_at": enqueued.timestamp() if isinstance(enqueued, datetime) else None,
            "locked_until": locked.timestamp() if isinstance(locked, datetime) else None,
        }
        if dead:
            info["dead_letter_reason"] = sb_message.dead_letter_reason
            info["dead_letter_error_description"] = sb_message.dead_letter_error_description
            metadata[DLQ_REASON] = sb_message.dead_letter_reason
            metadata[DLQ_ERROR] = sb_message.dead_letter_error_description
        metadata[SERVICEBUS_KEY] = info
        ttl = sb_message.time_to_live
        ttl_seconds: int | None = None
        if isinstance(ttl, timedelta) and timedelta(0) < ttl < _NEVER:
            ttl_seconds = max(1, math.ceil(ttl.total_seconds()))
        return Message(
            message_id=_str_or_none(sb_message.message_id) or new_message_id(),
            message_type=message_type,
            sender_id=sender if isinstance(sender, str) and sender else "anonymous",
            recipient_id=system.get("to"),
            content=self._content(sb_message),
            timestamp=enqueued if isinstance(enqueued, datetime) else datetime.now(UTC),
            priority=prio or MessagePriority.NORMAL,
            metadata=metadata,
            correlation_id=_str_or_none(sb_message.correlation_id),
            reply_to=_str_or_none(sb_message.reply_to),
            ttl=ttl_seconds,
        )

    async def _receive_once(
        self, receiver: ServiceBusReceiver, max_count: int, wait: float
    ) -> list[ServiceBusReceivedMessage]:
        task = asyncio.ensure_future(
            receiver.receive_messages(max_message_count=max_count, max_wait_time=max(wait, 0.05))
        )
        stopper = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return []
        return list(task.result())

    async def receive(
        self, topic_name: str, subscription_name: str, max_count: int, timeout: float | None
    ) -> list[Message]:
        """Peek-lock ``receive_messages`` in chunks of ``receive_chunk_seconds``."""
        self._check()
        receiver = self._receiver(topic_name, subscription_name)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self._lock(topic_name, subscription_name):
            while not self._closing.is_set():
                wait = self.receive_chunk_seconds
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - loop.time()))
                with _azure(f"receive from {topic_name}/{subscription_name}"):
                    batch = await self._receive_once(receiver, max_count, wait)
                if batch:
                    out: list[Message] = []
                    for sb_message in batch:
                        msg = self._message(sb_message, topic_name, subscription_name, dead=False)
                        token = msg.metadata[SERVICEBUS_KEY]["lock_token"]
                        if isinstance(token, str):
                            self._held[token] = _Held(
                                receiver, sb_message, topic_name, subscription_name
                            )
                        out.append(msg)
                    return out
                if deadline is not None and loop.time() >= deadline:
                    return []
        return []

    # -------------------------------------------------------------- settling

    def _take(self, message: Message) -> tuple[str, _Held]:
        info = message.metadata.get(SERVICEBUS_KEY) if isinstance(message, Message) else None
        token = info.get("lock_token") if isinstance(info, dict) else None
        if not isinstance(token, str):
            raise UnknownMessageError(
                "this message holds no lock (already settled, read from the dead-letter queue,"
                " or not received from a subscription)"
            )
        held = self._held.get(token)
        if held is None:
            raise UnknownMessageError(
                f"message {message.message_id!r} was not received by this ServiceBusManager"
                " (on Azure a message is settled through the receiver that received it)"
            )
        return token, held

    def _done(self, message: Message, token: str) -> None:
        self._held.pop(token, None)
        message.metadata[SERVICEBUS_KEY]["lock_token"] = None

    async def complete(self, message: Message) -> None:
        """``complete_message``."""
        self._check()
        token, held = self._take(message)
        try:
            with _azure(f"complete message {message.message_id!r}"):
                await held.receiver.complete_message(held.message)
        except LockLostError:
            self._done(message, token)
            raise
        self._done(message, token)

    async def abandon(self, message: Message) -> None:
        """``abandon_message`` (Azure applies ``max_delivery_count``)."""
        self._check()
        token, held = self._take(message)
        try:
            with _azure(f"abandon message {message.message_id!r}"):
                await held.receiver.abandon_message(held.message)
        finally:
            self._done(message, token)

    async def dead_letter(
        self, message: Message, reason: str | None, error_description: str | None
    ) -> None:
        """``dead_letter_message``."""
        self._check()
        token, held = self._take(message)
        try:
            with _azure(f"dead-letter message {message.message_id!r}"):
                await held.receiver.dead_letter_message(
                    held.message, reason=reason, error_description=error_description
                )
        finally:
            self._done(message, token)

    async def renew_lock(self, message: Message) -> datetime:
        """``renew_message_lock``."""
        self._check()
        token, held = self._take(message)
        try:
            with _azure(f"renew the lock of {message.message_id!r}"):
                until = await held.receiver.renew_message_lock(held.message)
        except LockLostError:
            self._done(message, token)
            raise
        if isinstance(until, datetime):
            message.metadata[SERVICEBUS_KEY]["locked_until"] = until.timestamp()
            return until
        return datetime.now(UTC)

    # -------------------------------------------------------------- dead letters

    async def dead_letters(
        self, topic_name: str, subscription_name: str, max_count: int
    ) -> list[Message]:
        """``peek_messages`` on the ``deadletter`` sub-queue, from its first message."""
        self._check()
        receiver = self._receiver(topic_name, subscription_name, dead_letter=True)
        async with self._lock(topic_name, subscription_name, True):
            with _azure(f"read the dead letters of {topic_name}/{subscription_name}"):
                peeked = await receiver.peek_messages(
                    max_message_count=max_count, sequence_number=1
                )
        return [self._message(m, topic_name, subscription_name, dead=True) for m in peeked]

    async def resubmit(self, message: Message) -> None:
        """Receive the dead letter, send a copy to the topic, complete the dead letter."""
        self._check()
        info = message.metadata.get(SERVICEBUS_KEY) if isinstance(message, Message) else None
        if not isinstance(info, dict) or "dead_letter_reason" not in info:
            raise UnknownMessageError("resubmit takes a message read with receive_dead_letters()")
        topic, sub = str(info.get("topic")), str(info.get("subscription"))
        wanted = str(info.get("delivery_id"))
        receiver = self._receiver(topic, sub, dead_letter=True)
        found: Any = None
        others: list[Any] = []
        async with self._lock(topic, sub, True):
            with _azure(f"resubmit a dead letter of {topic}/{sub}"):
                for _ in range(100):
                    batch = await self._receive_once(receiver, 100, self.dead_letter_wait_seconds)
                    if not batch:
                        break
                    for item in batch:
                        if found is None and _str_or_none(item.sequence_number) == wanted:
                            found = item
                        else:
                            others.append(item)
                    if found is not None:
                        break
                for item in others:
                    await receiver.abandon_message(item)
                if found is None:
                    raise UnknownMessageError(
                        f"no dead letter {message.message_id!r} in {topic}/{sub}"
                        " (already resubmitted or purged?)"
                    )
                copy = self._message(found, topic, sub, dead=True)
                props = copy.metadata[SERVICEBUS_KEY]["properties"]
                system = {
                    "message_id": copy.message_id,
                    **copy.metadata[SERVICEBUS_KEY]["system"],
                }
                if copy.correlation_id:
                    system["correlation_id"] = copy.correlation_id
                if copy.reply_to:
                    system["reply_to"] = copy.reply_to
                metadata = {
                    k: v for k, v in copy.metadata.items() if k not in (DLQ_REASON, DLQ_ERROR)
                }
                metadata[SERVICEBUS_KEY] = {"properties": props}
                outgoing = OutgoingMessage(copy.copy(metadata=metadata), props, system)
                await self._sender(topic).send_messages(self._outgoing(outgoing))
                await receiver.complete_message(found)

    async def purge_dead_letters(self, topic_name: str, subscription_name: str) -> int:
        """Drain the ``deadletter`` sub-queue in receive-and-delete mode."""
        self._check()
        count = 0
        with _azure(f"purge the dead letters of {topic_name}/{subscription_name}"):
            receiver = self.client.get_subscription_receiver(
                topic_name=topic_name,
                subscription_name=subscription_name,
                sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE,
            )
            try:
                while True:
                    batch = await self._receive_once(receiver, 100, self.dead_letter_wait_seconds)
                    if not batch:
                        break
                    count += len(batch)
            finally:
                await receiver.close()
        return count
