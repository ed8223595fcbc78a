"""The :class:`MessageBus`: publish/subscribe, per-agent queues, request/response, commands,
event streams and the dead-letter queue, over any engine behind the broker seam.

Delivery policy is decided here, once, so every engine behaves the same:

* priority order, FIFO within a priority (the engine's ``receive``);
* a handler that returns acks; one that raises nacks: redelivery after the retry policy's
  backoff, and after ``max_attempts`` the dead-letter queue with reason ``max_attempts`` and
  the last error;
* a message past its TTL is never delivered: dead-lettered with reason ``expired``;
* ``at_most_once`` messages are removed when handed out; ``exactly_once`` ones are deduplicated
  on their idempotency key at publish and, when handled by a subscription, the key is recorded
  in the same transaction as the ack, together with everything the handler published through
  this bus (a transactional outbox);
* undecodable bytes go to the dead-letter queue with reason ``undecodable`` (``undecryptable``,
  ``signature``, ``hop_limit``, ``no_handler`` likewise): nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from dataclasses import dataclass, field
from time import perf_counter
from types import CoroutineType
from typing import (
    Any,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    NamedTuple,
    Sequence,
    TypedDict,
    Union,
    Unpack,
)

from ...config.messagebus import MessageBusConfig
from ..brokers import open_broker
from ..brokers.base import Broker, DeadLetter, Delivery, Envelope
from ..clock import SYSTEM_CLOCK, Clock
from ..codec.envelope import COMPRESSION_ALGORITHMS, EncodeOptions, decode, encode
from ..errors import (
    AmbiguousMessageError,
    BrokerClosedError,
    BrokerError,
    ConfigurationError,
    DecodeError,
    DecryptionError,
    InvalidMessageError,
    LockLostError,
    MessagingError,
    RequestFailedError,
    RequestTimeoutError,
    RoutingError,
    UnknownMessageError,
)
from ..errors import error_text as _error_text
from ..metadata import DLQ_AT, DLQ_ATTEMPTS, DLQ_ERROR, DLQ_QUEUE, DLQ_REASON
from ..policy import DEFAULT_OPTIONS, DeliveryOptions, RetryPolicy
from ..types import (
    BROADCAST_TYPES,
    MESSAGE_FIELDS,
    REQUEST_TYPES,
    DeliveryMode,
    Message,
    MessagePriority,
    MessageType,
    new_message_id,
)
from .hooks import SecurityHooks, TelemetryHooks

__all__ = ["EventStream", "Handler", "MessageBus", "PublishResult", "Subscription"]

log = logging.getLogger("aos.messaging.bus")

Handler = Callable[[Message], Union[Awaitable[Any], Any]]
"""A subscription handler: sync or async; its return value answers a request."""




class PublishResult(NamedTuple):
    """What a publish did: the queues it reached; ``duplicate`` when deduplication kept it out."""

    message_id: str
    recipients: tuple[str, ...]
    duplicate: bool = False


class PublishOptions(TypedDict, total=False):
    """Keyword arguments of :meth:`MessageBus.publish`: message fields (when no Message is
    passed) and delivery options."""

    message_type: MessageType | str
    content: dict[str, Any]
    recipient_id: str
    sender_id: str
    priority: MessagePriority | int | str
    metadata: dict[str, Any]
    correlation_id: str
    reply_to: str
    ttl: int
    message_id: str
    message: Message
    delivery_mode: str | DeliveryMode
    idempotency_key: str
    retry_policy: RetryPolicy | Mapping[str, Any]
    compress: bool
    compression_algorithm: str
    encrypt: bool
    encryption_key: bytes
    delay: float
    deliver_at: Any


_OPTION_FIELDS = frozenset(
    {
        "delivery_mode",
        "idempotency_key",
        "retry_policy",
        "compress",
        "compression_algorithm",
        "encrypt",
        "encryption_key",
        "delay",
        "deliver_at",
    }
)


@dataclass(slots=True)
class _Current:
    """The delivery a handler is running for (contextvar), for hops, causation and outbox."""

    bus: MessageBus
    message: Message
    options: DeliveryOptions
    outbox: list[Envelope] | None


_current: contextvars.ContextVar[_Current | None] = contextvars.ContextVar(
    "aos_current_delivery", default=None
)


@dataclass
class Subscription:
    """A running consumer of one agent's queue.

    ``handlers`` maps a message type (None: any type) to its handler.
    """

    agent_id: str
    handlers: dict[MessageType | None, Handler]
    max_concurrency: int
    task: asyncio.Task[None] | None = None
    busy: bool = False
    held: dict[str, Delivery] = field(default_factory=dict)
    running: set[asyncio.Task[None]] = field(default_factory=set)


class _Expired(Exception):
    """Internal: a request's timer fired."""


def _expire(fut: asyncio.Future[Message]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class MessageBus:
    """The central message bus (spec section 3.1).

    ``MessageBus(config)``; ``await bus.start()`` (or ``async with``) before use and
    ``await bus.stop()`` after. ``broker`` and ``clock`` may be injected (tests).
    """

    def __init__(
        self,
        config: MessageBusConfig | None = None,
        *,
        broker: Broker | None = None,
        clock: Clock | None = None,
        router: Any = None,
        security: SecurityHooks | None = None,
        telemetry: TelemetryHooks | None = None,
        storage: Any = None,
    ) -> None:
        if config is not None and not isinstance(config, MessageBusConfig):
            raise ConfigurationError("config must be a MessageBusConfig")
        self.config = config or MessageBusConfig()
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.router = router
        self.storage = storage
        self._broker: Broker | None = broker
        self._owns_broker = broker is None
        self._security_given = security
        self.security: SecurityHooks | None = security
        self.telemetry = telemetry
        self._started = False
        self._stopping = False
        self._running = False
        self._fast_put: Callable[[str, Message, int | None], None] | None = None
        self._hand_off: Callable[..., Awaitable[bool]] | None = None
        self._subs: dict[str, Subscription] = {}
        self._inflight: dict[str, dict[str, Delivery]] = {}
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self.instance_id = new_message_id()[:16]
        self.reply_queue = f"_reply.{self.instance_id}"
        self._reply_task: asyncio.Task[None] | None = None
        self._listening_direct = False
        self._renew_task: asyncio.Task[None] | None = None
        self._streams: set[EventStream] = set()
        self._bindings_cache: dict[str, tuple[float, list[str]]] = {}
        self._retry = self.config.retry_policy
        self._slow_admit = self.config.require_signatures
        self._timing_tick = 0
        self._sample_every = self.config.metrics_sample_every
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    @property
    def broker(self) -> Broker:
        """The engine (after ``start()``)."""
        if self._broker is None:
            raise BrokerClosedError("the bus is not started: await bus.start() first")
        return self._broker

    @property
    def started(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._started and not self._stopping

    async def start(self) -> MessageBus:
        """Open the engine and the security layer; idempotent."""
        async with self._lock:
            if self._started:
                return self
            if self._stopping:
                raise BrokerClosedError("a stopped bus cannot be restarted; create a new one")
            if self._broker is None:
                self._broker = await open_broker(
                    self.config.resolved_broker_url(),
                    clock=self.clock,
                    dedup_window=self.config.dedup_window_seconds,
                )
            if self.security is None:
                from ..codec.security import BusSecurity

                self.security = BusSecurity(self.config, self.storage)
            await self.security.start()
            if self.telemetry is None and (
                getattr(self.config, "enable_tracing", False)
                or getattr(self.config, "enable_metrics", False)
            ):
                from ..observability.telemetry import BusTelemetry

                self.telemetry = BusTelemetry(self.config, clock=self.clock)
            self._started = True
            self._running = True
            self._fast_put = getattr(self._broker, "put_local", None)
            self._hand_off = (
                getattr(self._broker, "hand_off", None) if self.config.direct_requests else None
            )
            self._renew_task = asyncio.create_task(self._renew_locks(), name="aos-lock-renewal")
            return self

    async def stop(self, timeout: float | None = None) -> None:
        """Stop fetching, let running handlers finish (up to ``timeout``, default
        ``config.shutdown_timeout``), release what was fetched but not started, close."""
        if not self._started or self._stopping:
            self._stopping = True
            return
        self._stopping = True
        self._running = False
        deadline = self.config.shutdown_timeout if timeout is None else timeout
        tasks: list[asyncio.Task[None]] = []
        for sub in self._subs.values():
            if sub.task is not None:
                if not sub.busy:
                    sub.task.cancel()
                tasks.append(sub.task)
            tasks.extend(sub.running)
        for stream in list(self._streams):
            await stream.aclose()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for sub in self._subs.values():
            await self._release_held(sub)
        for name in ("_reply_task", "_renew_task"):
            task = getattr(self, name)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                setattr(self, name, None)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BrokerClosedError("the bus stopped before the response came"))
        self._pending.clear()
        if self.security is not None and self._security_given is None:
            await self.security.close()
        if self._owns_broker and self._broker is not None:
            await self._broker.close()
        self._started = False

    async def __aenter__(self) -> MessageBus:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _check(self) -> Broker:
        if not self._started or self._stopping:
            raise BrokerClosedError(
                "the bus is not running: await bus.start() (or use `async with`) first"
            )
        broker = self._broker
        assert broker is not None
        return broker

    # ------------------------------------------------------------------ publish

    def _build(
        self,
        message: Message | None,
        fields: Mapping[str, Any],
    ) -> Message:
        given = {k: v for k, v in fields.items() if v is not None}
        if message is not None:
            if not isinstance(message, Message):
                raise InvalidMessageError(
                    f"publish() takes a Message, not {type(message).__name__}"
                )
            if given:
                raise InvalidMessageError(
                    f"pass either a Message or message fields, not both ({sorted(given)})"
                )
            return message
        if "message_type" not in given:
            raise InvalidMessageError("publish() needs a Message or at least message_type=")
        given.setdefault("sender_id", self.config.default_sender_id)
        return Message(**given)

    def _options(
        self,
        delivery_mode: str | DeliveryMode,
        idempotency_key: str | None,
        retry_policy: RetryPolicy | Mapping[str, Any] | None,
    ) -> DeliveryOptions:
        mode = (
            delivery_mode
            if type(delivery_mode) is DeliveryMode
            else DeliveryMode.coerce(delivery_mode)
        )
        policy = RetryPolicy.parse(retry_policy)
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key
        ):
            raise InvalidMessageError("idempotency_key must be a non-empty string")
        current = _current.get()
        if (
            current is None
            and mode is DeliveryMode.AT_LEAST_ONCE
            and idempotency_key is None
            and policy is None
        ):
            return DEFAULT_OPTIONS
        return DeliveryOptions(
            delivery_mode=mode,
            idempotency_key=idempotency_key,
            retry_policy=policy,
            hops=(current.options.hops + 1) if current is not None else 0,
            causation_id=current.message.message_id if current is not None else None,
        )

    async def _targets(self, message: Message) -> list[str]:
        if message.recipient_id is not None:
            return [message.recipient_id]
        router = self.router
        if router is not None:
            target = await router.route_async(message, depth=self.queue_depth)
            if target is not None:
                return [target]
        if message.message_type in BROADCAST_TYPES:
            return await self._bound(message.message_type.value)
        raise RoutingError(
            f"{message.message_type.value} message {message.message_id} names no recipient_id"
            " and no routing rule matched it"
        )

    async def _bind(self, topic: str, queue: str) -> None:
        """Bind ``queue`` to ``topic`` (fan-out) and forget this bus's cached bindings."""
        await self.broker.bind(topic, queue)
        self._bindings_cache.pop(topic, None)

    async def _unbind(self, topic: str, queue: str) -> None:
        """Remove a binding and forget this bus's cached bindings."""
        await self.broker.unbind(topic, queue)
        self._bindings_cache.pop(topic, None)

    async def _bound(self, topic: str) -> list[str]:
        broker = self.broker
        if not broker.needs_bytes:
            return await broker.bindings(topic)
        now = self.clock.monotonic()
        cached = self._bindings_cache.get(topic)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        queues = await broker.bindings(topic)
        self._bindings_cache[topic] = (now, queues)
        return queues

    def _seal(
        self,
        compress: bool,
        compression_algorithm: str,
        encrypt: bool,
        encryption_key: bytes | None,
    ) -> EncodeOptions | None:
        if not compress and not encrypt:
            return None
        if compress and compression_algorithm not in COMPRESSION_ALGORITHMS:
            raise InvalidMessageError(
                f"unknown compression_algorithm {compression_algorithm!r};"
                f" expected one of {COMPRESSION_ALGORITHMS}"
            )
        key: bytes | None = None
        if encrypt:
            if not isinstance(encryption_key, (bytes, bytearray)) or len(encryption_key) != 32:
                raise InvalidMessageError(
                    "encrypt=True needs encryption_key: 32 bytes (AES-256-GCM)"
                )
            key = bytes(encryption_key)
            assert self.security is not None
            self.security.remember_content_key(key)
        return EncodeOptions(compression_algorithm if compress else None, key)

    def _envelopes(
        self,
        message: Message,
        options: DeliveryOptions,
        queues: Sequence[str],
        seal: EncodeOptions | None,
        available_at: float,
    ) -> list[Envelope]:
        broker = self.broker
        now = self.clock.now()
        ttl = message.ttl if message.ttl is not None else self.config.message_ttl_seconds
        expires = now + ttl if ttl is not None else None
        body: bytes | None = None
        if broker.needs_bytes or seal is not None or self.security_signing:
            body = encode(message, options, seal, max_bytes=self.config.max_message_bytes)
        keep = message if body is None else None
        key = options.idempotency_key
        if key is None and options.delivery_mode is DeliveryMode.EXACTLY_ONCE:
            key = message.message_id
        prio = message.priority.value
        return [
            Envelope(
                q,
                message.message_id,
                prio,
                body,
                keep,
                options,
                available_at,
                expires,
                None if key is None else f"{q}\x1f{key}",
            )
            for q in queues
        ]

    @property
    def security_signing(self) -> bool:
        """True when every published message is signed."""
        return self.security is not None and self.security.signing

    def _available_at(self, delay: float | None, deliver_at: Any) -> float:
        if delay is None and deliver_at is None:
            return 0.0
        if delay is not None and deliver_at is not None:
            raise InvalidMessageError("pass delay or deliver_at, not both")
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
                raise InvalidMessageError("delay must be a number of seconds >= 0")
            return self.clock.now() + float(delay)
        stamp = getattr(deliver_at, "timestamp", None)
        if stamp is None or getattr(deliver_at, "tzinfo", None) is None:
            raise InvalidMessageError("deliver_at must be an aware datetime")
        return float(stamp())

    async def publish(
        self, message: Message | None = None, /, **options: Unpack[PublishOptions]
    ) -> PublishResult:
        """Publish a message (or build one from the keyword fields) to its recipient's queue,
        to the router's target, or, for events without a recipient, to every subscriber.

        Keyword options: ``message=`` (the spec's spelling), message fields (``message_type``,
        ``content``, ``recipient_id``, ``sender_id``, ``priority``, ``metadata``,
        ``correlation_id``, ``reply_to``, ``ttl``, ``message_id``) when no Message is given,
        and ``delivery_mode``, ``idempotency_key``, ``retry_policy``, ``compress``,
        ``compression_algorithm``, ``encrypt``, ``encryption_key``, ``delay``, ``deliver_at``.

        Raises ``QueueFullError`` (nothing enqueued) when a queue holds ``max_queue_size``
        messages, ``PermissionDeniedError`` when access control refuses, ``RoutingError`` when
        a non-event names no recipient and no rule routes it.
        """
        if (
            not options
            and type(message) is Message
            and message.recipient_id is not None
            and message.ttl is None
            and self._running
            and not self._security_flags()
            and _current.get() is None
        ):
            if self._fast_put is not None:
                self._put_fast(message.recipient_id, message)
                return PublishResult(message.message_id, (message.recipient_id,))
            if self.telemetry is None and self.broker.needs_bytes:
                return await self._publish_plain(message.recipient_id, message)
        self._check()
        given: dict[str, Any] = dict(options)
        if "message" in given:
            if message is not None:
                raise InvalidMessageError("pass the message once, not also as message=")
            message = given.pop("message")
        unknown = set(given) - _OPTION_FIELDS - set(MESSAGE_FIELDS)
        if unknown:
            raise InvalidMessageError(f"unknown publish() options {sorted(unknown)}")
        msg = self._build(message, {k: given.get(k) for k in MESSAGE_FIELDS})
        opts = self._options(
            given.get("delivery_mode", DeliveryMode.AT_LEAST_ONCE),
            given.get("idempotency_key"),
            given.get("retry_policy"),
        )
        seal = self._seal(
            bool(given.get("compress", False)),
            given.get("compression_algorithm", "gzip"),
            bool(given.get("encrypt", False)),
            given.get("encryption_key"),
        )
        available_at = self._available_at(given.get("delay"), given.get("deliver_at"))
        return (await self._publish_many([(msg, opts)], seal, available_at))[0]

    async def _publish_plain(self, queue: str, message: Message) -> PublishResult:
        """A plain message (no options, no TTL, one recipient, nothing to sign, no
        telemetry) on an engine that stores bytes: what :meth:`_publish_many` does for it,
        without the general path's per-call set-up."""
        config = self.config
        ok = (
            await self.broker.send(
                self._envelopes(message, DEFAULT_OPTIONS, (queue,), None, 0.0),
                max_depth=config.max_queue_size,
                dedup_window=config.dedup_window_seconds,
            )
        )[0]
        return PublishResult(message.message_id, (queue,) if ok else (), duplicate=not ok)

    def _put_fast(self, queue: str, message: Message) -> None:
        """The in-process engine's fast path (a plain message, nothing to encode), with its
        publish reported to telemetry."""
        fast = self._fast_put
        assert fast is not None
        tel = self.telemetry
        if tel is None:
            fast(queue, message, self.config.max_queue_size)
        elif not tel.per_message:
            fast(queue, message, self.config.max_queue_size)
            counts = tel.published_counts
            key = (queue, message.message_type._value_)
            counts[key] = counts.get(key, 0) + 1
        else:
            with tel.on_publish(message, [queue]):
                fast(queue, message, self.config.max_queue_size)

    def _security_flags(self) -> bool:
        """True when anything on the publish path needs the full path (ACL, signing,
        a default TTL); the fast path reports to telemetry itself."""
        sec = self.security
        return (
            sec is not None and (sec.acl_active or sec.signing)
        ) or self.config.message_ttl_seconds is not None

    async def publish_batch(
        self,
        messages: Iterable[Message],
        *,
        delivery_mode: str | DeliveryMode = DeliveryMode.AT_LEAST_ONCE,
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        compress: bool = False,
        compression_algorithm: str = "gzip",
        encrypt: bool = False,
        encryption_key: bytes | None = None,
        delay: float | None = None,
    ) -> list[PublishResult]:
        """Publish several messages in one engine call (one transaction where the engine has
        them): all are enqueued, or none (``QueueFullError``)."""
        self._check()
        msgs = list(messages)
        for m in msgs:
            if not isinstance(m, Message):
                raise InvalidMessageError(f"publish_batch() takes Messages, not {type(m).__name__}")
        options = self._options(delivery_mode, None, retry_policy)
        seal = self._seal(compress, compression_algorithm, encrypt, encryption_key)
        return await self._publish_many(
            [(m, options) for m in msgs], seal, self._available_at(delay, None)
        )

    async def _publish_many(
        self,
        items: Sequence[tuple[Message, DeliveryOptions]],
        seal: EncodeOptions | None,
        available_at: float,
        *,
        queue_override: str | None = None,
        hand_off: float = 0.0,
    ) -> list[PublishResult]:
        """Enqueue ``items``. ``hand_off`` (seconds, request() only): first offer a single
        plain envelope to a live consumer of its queue, waiting that long for its answer."""
        security = self.security
        assert security is not None
        telemetry = self.telemetry
        plan: list[tuple[Message, list[str], list[Envelope]]] = []
        spans: list[Any] = []
        current = _current.get()
        try:
            for msg, options in items:
                if security.acl_active:
                    security.authorize_publish(
                        msg.sender_id, msg.message_type, current.message if current else None
                    )
                queues = [queue_override] if queue_override else await self._targets(msg)
                if telemetry is not None:
                    span = telemetry.on_publish(msg, queues)
                    span.__enter__()
                    spans.append(span)
                if security.signing:
                    await security.sign(msg)
                plan.append(
                    (msg, queues, self._envelopes(msg, options, queues, seal, available_at))
                )
            envelopes = [env for _, _, envs in plan for env in envs]
            if current is not None and current.outbox is not None and current.bus is self:
                current.outbox.extend(envelopes)
                flags = [True] * len(envelopes)
            elif (
                hand_off > 0
                and self._hand_off is not None
                and len(envelopes) == 1
                and envelopes[0].options.delivery_mode is DeliveryMode.AT_LEAST_ONCE
                and await self._hand_off(envelopes[0], reply_queue=self.reply_queue, wait=hand_off)
            ):
                flags = [True]  # a live consumer of the recipient took it (see request())
            elif envelopes:
                flags = await self.broker.send(
                    envelopes,
                    max_depth=self.config.max_queue_size,
                    dedup_window=self.config.dedup_window_seconds,
                )
            else:
                flags = []
        except BaseException as exc:
            for span in spans:
                span.__exit__(type(exc), exc, exc.__traceback__)
            raise
        for span in spans:
            span.__exit__(None, None, None)
        results: list[PublishResult] = []
        i = 0
        for msg, queues, envs in plan:
            ok = flags[i : i + len(envs)]
            i += len(envs)
            reached = tuple(q for q, f in zip(queues, ok) if f)
            results.append(
                PublishResult(msg.message_id, reached, duplicate=bool(envs) and not any(ok))
            )
        return results

    async def send_command(
        self,
        recipient_id: str,
        command: str,
        parameters: dict[str, Any] | None = None,
        *,
        sender_id: str | None = None,
        priority: MessagePriority | int | str = MessagePriority.NORMAL,
        **publish_options: Any,
    ) -> PublishResult:
        """Send a COMMAND ``{"command": ..., "parameters": {...}}`` to one agent."""
        if not isinstance(command, str) or not command:
            raise InvalidMessageError("command must be a non-empty string")
        return await self.publish(
            Message(
                message_type=MessageType.COMMAND,
                sender_id=sender_id or self.config.default_sender_id,
                recipient_id=recipient_id,
                content={"command": command, "parameters": dict(parameters or {})},
                priority=MessagePriority.coerce(priority),
            ),
            **publish_options,
        )

    # ------------------------------------------------------------------ request / reply

    async def request(
        self,
        sender_id: str | None = None,
        recipient_id: str | None = None,
        content: dict[str, Any] | None = None,
        timeout: float = 30,
        *,
        message_type: MessageType | str = MessageType.QUERY,
        priority: MessagePriority | int | str = MessagePriority.NORMAL,
        metadata: dict[str, Any] | None = None,
        **publish_options: Any,
    ) -> Message:
        """Send a QUERY (by default) and wait for the correlated RESPONSE.

        Raises :class:`RequestTimeoutError` (a ``TimeoutError``) when none comes within
        ``timeout`` seconds and :class:`RequestFailedError` when the responder dead-lettered
        the request. A response that comes after the timeout is not lost: it is delivered to
        the requester's own queue (``sender_id``).
        """
        self._check()
        if recipient_id is None:
            raise InvalidMessageError("request() needs recipient_id")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidMessageError("timeout must be a positive number of seconds")
        msg = Message(
            message_type=message_type,  # type: ignore[arg-type]  # coerced by Message
            sender_id=sender_id or self.config.default_sender_id,
            recipient_id=recipient_id,
            content={} if content is None else content,
            priority=priority,  # type: ignore[arg-type]
            metadata={} if metadata is None else metadata,
            reply_to=self.reply_queue,
        )
        correlation = msg.correlation_id = msg.message_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fut: asyncio.Future[Message] = loop.create_future()
        self._pending[correlation] = fut
        if self._reply_task is None:
            self._reply_task = asyncio.create_task(self._reply_loop(), name="aos-replies")
        try:
            if not self._listening_direct:
                listen = getattr(self._broker, "listen_direct", None)
                if listen is not None:
                    await listen(self.reply_queue, self._take_direct_response)
                self._listening_direct = True
            seal: EncodeOptions | None = None
            if not publish_options and _current.get() is None:
                options = DEFAULT_OPTIONS
            else:
                options = self._options(
                    publish_options.pop("delivery_mode", DeliveryMode.AT_LEAST_ONCE),
                    publish_options.pop("idempotency_key", None),
                    publish_options.pop("retry_policy", None),
                )
                seal = self._seal(
                    publish_options.pop("compress", False),
                    publish_options.pop("compression_algorithm", "gzip"),
                    publish_options.pop("encrypt", False),
                    publish_options.pop("encryption_key", None),
                )
            if publish_options:
                raise InvalidMessageError(f"unknown request() options {sorted(publish_options)}")
            # A request is sent at once even inside an exactly-once handler: waiting for the
            # answer while the request sat in the outbox could never finish.
            current = _current.get()
            if (
                options is DEFAULT_OPTIONS
                and seal is None
                and self._fast_put is not None
                and self._running
                and not self._security_flags()
            ):
                self._put_fast(recipient_id, msg)
            elif current is not None and current.outbox is not None:
                token = _current.set(_Current(self, current.message, current.options, None))
                try:
                    await self._publish_many([(msg, options)], seal, 0.0, hand_off=timeout)
                finally:
                    _current.reset(token)
            else:
                await self._publish_many([(msg, options)], seal, 0.0, hand_off=timeout)
            timer = loop.call_later(max(0.0, deadline - loop.time()), _expire, fut)
            try:
                response = await fut
            except _Expired:
                raise RequestTimeoutError(
                    f"no response from {recipient_id!r} within {timeout}s"
                    f" (correlation id {correlation})"
                ) from None
            finally:
                timer.cancel()
        finally:
            self._pending.pop(correlation, None)
        if response.message_type is MessageType.ERROR and response.content.get("aos_failed"):
            raise RequestFailedError(
                f"request to {recipient_id!r} failed: {response.content.get('reason')}"
                f" ({response.content.get('error')})",
                reason=response.content.get("reason"),
                error=response.content.get("error"),
            )
        return response

    async def reply(
        self, request: Message, content: dict[str, Any], *, sender_id: str | None = None
    ) -> PublishResult | None:
        """Answer a request explicitly (a handler can also just return the content)."""
        return await self._send_response(request, content, sender_id=sender_id)

    async def _send_response(
        self,
        request: Message,
        result: Any,
        *,
        sender_id: str | None = None,
        message_type: MessageType = MessageType.RESPONSE,
    ) -> PublishResult | None:
        if request.reply_to is None:
            return None
        if isinstance(result, Message):
            response = result
            if response.correlation_id is None:
                response.correlation_id = request.correlation_id or request.message_id
        else:
            if not isinstance(result, dict):
                result = {"result": result}
            response = Message(
                message_type=message_type,
                sender_id=sender_id or request.recipient_id or self.config.default_sender_id,
                recipient_id=request.sender_id,
                content=result,
                priority=request.priority,
                correlation_id=request.correlation_id or request.message_id,
            )
        # A response for a request this very bus is waiting on needs no trip through a queue.
        if request.reply_to == self.reply_queue:
            fut = self._pending.get(response.correlation_id or "")
            if fut is not None and not fut.done():
                fut.set_result(response)
                return PublishResult(response.message_id, (self.reply_queue,))
        options = self._options(DeliveryMode.AT_LEAST_ONCE, None, None)
        if await self._send_direct(request.reply_to, response, options, request.message_id):
            return PublishResult(response.message_id, (request.reply_to,))
        results = await self._publish_many(
            [(response, options)], None, 0.0, queue_override=request.reply_to
        )
        return results[0]

    async def _send_direct(
        self, queue: str, response: Message, options: DeliveryOptions, reply_for: str
    ) -> bool:
        """Hand a response straight to its requester when the engine can and the requester is
        waiting right now (nothing stored on the way). False: send it the durable way, which
        also covers a requester that gave up or is gone."""
        send = getattr(self._broker, "send_direct", None)
        if send is None or not queue.startswith("_reply."):
            return False
        current = _current.get()
        if current is not None and current.outbox is not None:
            return False  # exactly-once: the response commits with the ack
        security = self.security
        telemetry = self.telemetry
        if (security is not None and security.acl_active) or (
            telemetry is not None and telemetry.per_message
        ):
            return False  # keep permissions and spans on the one full path
        if security is not None and security.signing:
            await security.sign(response)
        body = encode(response, options, None, max_bytes=self.config.max_message_bytes)
        envelope = Envelope(queue, response.message_id, response.priority.value, body)
        if not await send(envelope, reply_for=reply_for):
            return False
        if telemetry is not None:
            telemetry.count_publish(queue, response.message_type._value_)
        return True

    async def _take_direct_response(self, body: bytes) -> bool:
        """A response handed over directly: True when a waiting request took it."""
        try:
            msg, _ = decode(
                body,
                max_bytes=self.config.max_message_bytes,
                keys=self.security.content_key if self.security is not None else None,
            )
        except MessagingError:
            return False  # the durable path dead-letters it with a reason
        security = self.security
        if (
            security is not None
            and security.require_signatures
            and not security.verify(msg)
            and not await security.verify_async(msg)
        ):
            return False
        fut = self._pending.get(msg.correlation_id or "")
        if fut is None or fut.done():
            return False  # late: the durable path delivers it to the requester's queue
        fut.set_result(msg)
        return True

    async def _reply_loop(self) -> None:
        broker = self.broker
        while not self._stopping:
            try:
                batch = await broker.receive(self.reply_queue, 64, self.config.lock_seconds)
            except BrokerClosedError:
                return
            except BrokerError:
                log.exception("receiving responses failed; retrying")
                await asyncio.sleep(self.config.poll_interval)
                continue
            if not batch:
                await broker.wait(self.reply_queue, self.config.poll_interval)
                continue
            done: list[Delivery] = []
            for d in batch:
                msg = await self._admit(self.reply_queue, d)
                if msg is None:
                    continue
                fut = self._pending.get(msg.correlation_id or "")
                if fut is not None and not fut.done():
                    if self.telemetry is not None:
                        with self.telemetry.on_handle(
                            self.reply_queue, msg, d.attempts, d.enqueued_at
                        ):
                            fut.set_result(msg)
                    else:
                        fut.set_result(msg)
                elif msg.recipient_id:
                    # Late: the requester gave up. Deliver to its own queue instead of losing it.
                    try:
                        await self._publish_many(
                            [(msg, d.options)], None, 0.0, queue_override=msg.recipient_id
                        )
                    except MessagingError as exc:
                        await broker.dead_letter(
                            self.reply_queue,
                            d,
                            reason="late_response",
                            error=_error_text(exc),
                        )
                        continue
                done.append(d)
            if done:
                await broker.ack(self.reply_queue, done)

    # ------------------------------------------------------------------ consuming

    async def _admit(self, queue: str, d: Delivery) -> Message | None:
        """Decode and check a delivery; dead-letter it (returning None) when it must not
        reach a handler."""
        broker = self.broker
        msg = d.message
        if msg is None:
            try:
                msg, d.options = decode(
                    d.body or b"",
                    max_bytes=self.config.max_message_bytes,
                    keys=self.security.content_key if self.security is not None else None,
                )
            except DecryptionError as exc:
                await self._dead_letter(queue, d, None, "undecryptable", exc)
                return None
            except DecodeError as exc:
                await self._dead_letter(queue, d, None, "undecodable", exc)
                return None
            if msg.message_id != d.message_id:
                await self._dead_letter(
                    queue,
                    d,
                    None,
                    "undecodable",
                    None,
                    error_text=f"envelope id {msg.message_id!r} is not the engine's id"
                    f" {d.message_id!r}",
                )
                return None
            d.message = msg
        if d.expires_at is not None and d.expires_at <= self.clock.now():
            await self._dead_letter(queue, d, msg, "expired", None)
            return None
        options = d.options
        policy = options.retry_policy or self._retry
        if d.attempts > policy.max_attempts:
            await self._dead_letter(
                queue, d, msg, "max_attempts", None, error_text=d.last_error or "lock expired"
            )
            return None
        if options.hops > self.config.hop_limit:
            await self._dead_letter(
                queue,
                d,
                msg,
                "hop_limit",
                None,
                error_text=f"{options.hops} hops > hop_limit {self.config.hop_limit}",
            )
            return None
        security = self.security
        if (
            security is not None
            and security.require_signatures
            and not security.verify(msg)
            # a sender registered in another process a moment ago: re-read its key record
            and not await security.verify_async(msg)
        ):
            await self._dead_letter(
                queue, d, msg, "signature", None, error_text="missing, forged or tampered signature"
            )
            return None
        if options.delivery_mode is DeliveryMode.AT_MOST_ONCE:
            await broker.ack(queue, [d])
        elif options.delivery_mode is DeliveryMode.EXACTLY_ONCE:
            if await broker.is_processed(self._processed_key(queue, msg, options)):
                await broker.ack(queue, [d])
                return None
        return msg

    @staticmethod
    def _processed_key(queue: str, msg: Message, options: DeliveryOptions) -> str:
        return f"{queue}\x1f{options.idempotency_key or msg.message_id}"

    async def _dead_letter(
        self,
        queue: str,
        d: Delivery,
        msg: Message | None,
        reason: str,
        exc: BaseException | None,
        *,
        error_text: str | None = None,
    ) -> None:
        error = error_text if exc is None else _error_text(exc)
        ok = await self.broker.dead_letter(queue, d, reason=reason, error=error)
        if self.telemetry is not None:
            mt = msg.message_type.value if msg is not None else "unknown"
            self.telemetry.on_settle(
                queue, mt, "expired" if reason == "expired" else "dead_lettered"
            )
        if not ok:
            log.warning("dead-lettering %s in %s failed: lock lost", d.message_id, queue)
            return
        log.info("dead-lettered %s from %s: %s %s", d.message_id, queue, reason, error or "")
        if (
            msg is not None
            and msg.reply_to
            and msg.message_type in REQUEST_TYPES
            and reason not in ("signature", "permission_denied")  # reply_to is not trusted then
        ):
            try:
                await self._send_response(
                    msg,
                    {"aos_failed": True, "reason": reason, "error": error},
                    message_type=MessageType.ERROR,
                )
            except MessagingError:
                log.exception("could not tell the requester of %s it failed", d.message_id)

    async def subscribe(
        self,
        agent_id: str,
        message_types: Iterable[MessageType | str] | None = None,
        handler: Handler | None = None,
        *,
        max_concurrency: int = 1,
    ) -> Subscription:
        """Start consuming ``agent_id``'s queue with ``handler`` for ``message_types``
        (None: every type). Events of those types published without a recipient are
        delivered to this agent from now on (a durable binding)."""
        self._check()
        if not isinstance(agent_id, str) or not agent_id:
            raise InvalidMessageError("agent_id must be a non-empty string")
        if handler is None or not callable(handler):
            raise InvalidMessageError("subscribe() needs a callable handler")
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise ConfigurationError("max_concurrency must be an int >= 1")
        types: list[MessageType | None] = (
            [None] if message_types is None else [MessageType.coerce(t) for t in message_types]
        )
        security = self.security
        assert security is not None
        if security.acl_active:
            for t in types:
                for mt in MessageType if t is None else [t]:
                    security.authorize_subscribe(agent_id, mt)
        for t in types:
            for mt in BROADCAST_TYPES if t is None else [t]:
                if mt in BROADCAST_TYPES:
                    await self._bind(mt.value, agent_id)
        sub = self._subs.get(agent_id)
        if sub is None:
            sub = Subscription(agent_id, {}, max_concurrency)
            self._subs[agent_id] = sub
        sub.max_concurrency = max(sub.max_concurrency, max_concurrency)
        for t in types:
            sub.handlers[t] = handler
        if sub.task is None or sub.task.done():
            sub.task = asyncio.create_task(self._consume(sub), name=f"aos-consumer:{agent_id}")
        return sub

    async def unsubscribe(self, agent_id: str, *, unbind: bool = True) -> None:
        """Stop the agent's consumer (after its current message) and, by default, remove its
        event bindings."""
        sub = self._subs.pop(agent_id, None)
        if sub is not None and sub.task is not None:
            if not sub.busy:
                sub.task.cancel()
            else:
                sub.handlers.clear()
            await asyncio.gather(sub.task, *sub.running, return_exceptions=True)
            await self._release_held(sub)
        if unbind and self._started:
            for mt in BROADCAST_TYPES:
                await self._unbind(mt.value, agent_id)

    async def _release_held(self, sub: Subscription) -> None:
        if not sub.held or self._broker is None:
            return
        held = list(sub.held.values())
        sub.held.clear()
        for d in held:
            try:
                await self._broker.release(sub.agent_id, d)
            except BrokerClosedError:
                return

    async def _consume(self, sub: Subscription) -> None:
        broker = self.broker
        queue = sub.agent_id
        lock = self.config.lock_seconds
        backoff = self.config.poll_interval
        while not self._stopping and sub.handlers:
            free = sub.max_concurrency - len(sub.running)
            if free <= 0:
                sub.busy = False
                await asyncio.wait(sub.running, return_when=asyncio.FIRST_COMPLETED)
                continue
            want = self.config.prefetch if sub.max_concurrency == 1 else free
            sub.busy = True
            try:
                batch = await broker.receive(queue, want, lock)
            except BrokerClosedError:
                sub.busy = False
                return
            except BrokerError:
                sub.busy = False
                log.exception("receive from %s failed; retrying", queue)
                await asyncio.sleep(backoff)
                continue
            if not batch:
                sub.busy = False
                await broker.wait(queue, self.config.poll_interval)
                continue
            held = sub.held
            for d in batch:
                held[d.message_id] = d
            drained = len(batch) < want
            if sub.max_concurrency == 1:
                # Handled in order; plain at-least-once acks are settled together after the
                # batch (one engine call, one commit), their locks renewed meanwhile.
                acks: list[Delivery] = []
                tel = self.telemetry
                # metrics only (no spans, no live listener): counted per batch, timed sampled
                samples: list[tuple[str, float, float]] | None = (
                    [] if tel is not None and not tel.per_message else None
                )
                for d in batch:
                    if self._stopping or not sub.handlers:
                        break
                    await self._deliver(sub, d, acks, samples)
                if acks:
                    await self._ack_batch(sub, acks, samples)
                elif samples:
                    assert tel is not None
                    tel.record_batch(queue, {}, samples)
            else:
                for d in batch:
                    task = asyncio.create_task(self._deliver(sub, d, None, None))
                    sub.running.add(task)
                    task.add_done_callback(sub.running.discard)
            sub.busy = False
            if drained and not broker.needs_bytes and not self._stopping and sub.handlers:
                # In-process engine, queue empty after this batch: wait for the next publish
                # (its wait() returns at once when something arrived meanwhile).
                await broker.wait(queue, self.config.poll_interval)
            if self._stopping or not sub.handlers:
                if sub.running:
                    await asyncio.gather(*sub.running, return_exceptions=True)
                await self._release_held(sub)
                return

    async def _ack_batch(
        self,
        sub: Subscription,
        acks: list[Delivery],
        samples: list[tuple[str, float, float]] | None = None,
    ) -> None:
        queue = sub.agent_id
        try:
            results = await self.broker.ack(queue, acks)
        except BrokerClosedError:
            return
        except MessagingError:
            log.exception(
                "acking %d messages in %s failed; they will be redelivered", len(acks), queue
            )
            results = [False] * len(acks)
        held = sub.held
        telemetry = self.telemetry
        if telemetry is not None and samples is not None:
            # counted per type; a batch is nearly always one type, so count runs, not messages
            counted: dict[str, int] = {}
            run_type: MessageType | None = None
            run = 0
            for d, ok in zip(acks, results):
                held.pop(d.message_id, None)
                if ok:
                    mt = d.message.message_type  # type: ignore[union-attr]  # it was handled
                    if mt is run_type:
                        run += 1
                        continue
                    if run_type is not None:
                        counted[run_type._value_] = counted.get(run_type._value_, 0) + run
                    run_type, run = mt, 1
                else:
                    log.warning("ack of %s in %s failed: its lock expired", d.message_id, queue)
            if run_type is not None:
                counted[run_type._value_] = counted.get(run_type._value_, 0) + run
            telemetry.record_batch(queue, counted, samples)
            return
        for d, ok in zip(acks, results):
            held.pop(d.message_id, None)
            if not ok:
                log.warning("ack of %s in %s failed: its lock expired", d.message_id, queue)
            elif telemetry is not None and d.message is not None:
                telemetry.on_settle(queue, d.message.message_type._value_, "acked")

    async def _deliver(
        self,
        sub: Subscription,
        d: Delivery,
        acks: list[Delivery] | None,
        samples: list[tuple[str, float, float]] | None,
    ) -> None:
        queue = sub.agent_id
        broker = self.broker
        settled_later = False
        try:
            msg = d.message
            if (
                msg is None
                or d.options is not DEFAULT_OPTIONS
                or d.expires_at is not None
                or d.attempts > self._retry.max_attempts
                or self._slow_admit
            ):
                msg = await self._admit(queue, d)
                if msg is None:
                    return
            security = self.security
            if security is not None and security.acl_active:
                # permissions tightened while a subscription runs apply from the next message
                try:
                    security.authorize_subscribe(queue, msg.message_type)
                except MessagingError as exc:
                    await self._dead_letter(queue, d, msg, "permission_denied", exc)
                    return
            options = d.options
            mode = options.delivery_mode
            handler = sub.handlers.get(msg.message_type) or sub.handlers.get(None)
            if handler is None:
                await self._dead_letter(
                    queue,
                    d,
                    msg,
                    "no_handler",
                    None,
                    error_text=f"{queue!r} has no handler for {msg.message_type.value!r}",
                )
                return
            telemetry = self.telemetry
            outbox: list[Envelope] | None = [] if mode is DeliveryMode.EXACTLY_ONCE else None
            token = _current.set(_Current(self, msg, options, outbox))
            span = None
            t0 = latency = -1.0
            if telemetry is not None:
                if samples is None:
                    span = telemetry.on_handle(queue, msg, d.attempts, d.enqueued_at)
                else:
                    self._timing_tick += 1
                    if self._timing_tick >= self._sample_every:
                        self._timing_tick = 0
                        latency = self.clock.now() - d.enqueued_at
                        t0 = perf_counter()
            try:
                if span is not None:
                    span.__enter__()
                result = handler(msg)
                if type(result) is CoroutineType or (
                    result is not None and inspect.isawaitable(result)
                ):
                    result = await result
                if result is not None and msg.reply_to and msg.message_type in REQUEST_TYPES:
                    await self._send_response(msg, result, sender_id=queue)
            except asyncio.CancelledError:
                if span is not None:
                    span.__exit__(None, None, None)
                raise
            except Exception as exc:
                if span is not None:
                    span.__exit__(type(exc), exc, exc.__traceback__)
                elif samples is not None and telemetry is not None:
                    telemetry.count_error(queue, msg.message_type._value_)
                _current.reset(token)
                if mode is DeliveryMode.AT_MOST_ONCE:
                    log.warning(
                        "at-most-once message %s failed in %s: %s",
                        msg.message_id,
                        queue,
                        _error_text(exc),
                    )
                    return
                await self._failed(queue, d, msg, exc)
                return
            if span is not None:
                span.__exit__(None, None, None)
            elif t0 >= 0.0 and samples is not None:
                samples.append((msg.message_type._value_, latency, perf_counter() - t0))
            _current.reset(token)
            if mode is DeliveryMode.AT_MOST_ONCE:
                if samples is not None and telemetry is not None:
                    telemetry.record_batch(queue, {msg.message_type._value_: 1}, [])
                return
            if outbox is not None:
                ok = await broker.ack(
                    queue,
                    [d],
                    processed_key=self._processed_key(queue, msg, options),
                    processed_ttl=self.config.processed_ttl_seconds,
                    outbox=outbox,
                )
            elif acks is not None:
                acks.append(d)
                settled_later = True
                return
            else:
                ok = await broker.ack(queue, [d])
            if not ok[0]:
                log.warning(
                    "ack of %s in %s failed: its lock expired during the handler",
                    msg.message_id,
                    queue,
                )
            elif samples is not None and telemetry is not None:
                telemetry.record_batch(queue, {msg.message_type._value_: 1}, [])
            elif telemetry is not None:
                telemetry.on_settle(queue, msg.message_type.value, "acked")
        except BrokerClosedError:
            return
        except MessagingError:
            log.exception("settling %s in %s failed; it will be redelivered", d.message_id, queue)
        finally:
            if not settled_later:
                sub.held.pop(d.message_id, None)

    async def _failed(self, queue: str, d: Delivery, msg: Message, exc: BaseException) -> None:
        policy = d.options.retry_policy or self._retry
        if d.attempts >= policy.max_attempts:
            await self._dead_letter(queue, d, msg, "max_attempts", exc)
            return
        delay = policy.delay(d.attempts)
        await self.broker.release(queue, d, delay=delay, error=_error_text(exc))
        if self.telemetry is not None:
            self.telemetry.on_settle(queue, msg.message_type.value, "nacked")

    async def _renew_locks(self) -> None:
        """Keep the locks of messages held by running subscriptions alive."""
        interval = self.config.lock_seconds / 3
        while True:
            await self.clock.sleep(interval)
            for sub in list(self._subs.values()):
                if not sub.held:
                    continue
                held = list(sub.held.values())
                try:
                    await self.broker.renew(
                        sub.agent_id,
                        held,
                        self.config.lock_seconds,
                    )
                except BrokerClosedError:
                    return
                except BrokerError:
                    log.exception("renewing locks in %s failed", sub.agent_id)

    # ------------------------------------------------------------------ pull side

    async def get_messages(self, agent_id: str, limit: int = 10) -> list[Message]:
        """Lock and return up to ``limit`` messages of ``agent_id``'s queue (priority, then
        FIFO). Settle each with :meth:`acknowledge` or :meth:`nack`; an unsettled message is
        delivered again when its lock (``lock_seconds``) expires."""
        broker = self._check()
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidMessageError("limit must be an int >= 1")
        out: list[Message] = []
        while len(out) < limit:
            batch = await broker.receive(agent_id, limit - len(out), self.config.lock_seconds)
            if not batch:
                break
            for d in batch:
                msg = await self._admit(agent_id, d)
                if msg is None:
                    continue
                security = self.security
                if security is not None and security.acl_active:
                    try:
                        security.authorize_subscribe(agent_id, msg.message_type)
                    except MessagingError:
                        await broker.release(agent_id, d)
                        raise
                out.append(msg)
                if self.telemetry is not None:
                    self.telemetry.on_settle(agent_id, msg.message_type.value, "delivered")
                if d.options.delivery_mode is not DeliveryMode.AT_MOST_ONCE:
                    self._inflight.setdefault(msg.message_id, {})[agent_id] = d
        return out

    async def receive(self, agent_id: str, timeout: float | None = None) -> Message | None:
        """Lock and return one message, waiting up to ``timeout`` seconds (None: until one
        comes); ``None`` when the time passes with none."""
        broker = self._check()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            msgs = await self.get_messages(agent_id, 1)
            if msgs:
                return msgs[0]
            remaining = self.config.poll_interval
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    return None
                remaining = min(remaining, left)
            await broker.wait(agent_id, remaining)

    def _take(self, message_id: str, agent_id: str | None) -> tuple[str, Delivery]:
        holders = self._inflight.get(message_id)
        if not holders:
            raise UnknownMessageError(
                f"message {message_id!r} is not held by this bus (already settled, or never"
                " received with get_messages/receive)"
            )
        if agent_id is None:
            if len(holders) > 1:
                raise AmbiguousMessageError(
                    f"agents {sorted(holders)} hold message {message_id!r}: pass agent_id"
                )
            agent_id = next(iter(holders))
        d = holders.get(agent_id)
        if d is None:
            raise UnknownMessageError(f"agent {agent_id!r} does not hold message {message_id!r}")
        del holders[agent_id]
        if not holders:
            del self._inflight[message_id]
        return agent_id, d

    async def acknowledge(self, message_id: str, agent_id: str | None = None) -> None:
        """Settle a message received with :meth:`get_messages`/:meth:`receive` as done.

        Raises :class:`LockLostError` when its lock expired first (it may be redelivered)."""
        broker = self._check()
        agent, d = self._take(message_id, agent_id)
        options = d.options
        if options.delivery_mode is DeliveryMode.EXACTLY_ONCE and d.message is not None:
            ok = await broker.ack(
                agent,
                [d],
                processed_key=self._processed_key(agent, d.message, options),
                processed_ttl=self.config.processed_ttl_seconds,
            )
        else:
            ok = await broker.ack(agent, [d])
        if not ok[0]:
            raise LockLostError(
                f"the lock on {message_id!r} in {agent!r} expired before the ack;"
                " the message will be delivered again"
            )
        if self.telemetry is not None and d.message is not None:
            self.telemetry.on_settle(agent, d.message.message_type.value, "acked")

    async def nack(
        self,
        message_id: str,
        agent_id: str | None = None,
        *,
        error: str | BaseException | None = None,
        delay: float | None = None,
    ) -> None:
        """Give a message back: redelivered after the retry policy's backoff (or ``delay``),
        or dead-lettered once ``max_attempts`` deliveries have failed."""
        broker = self._check()
        agent, d = self._take(message_id, agent_id)
        exc = error if isinstance(error, BaseException) else RuntimeError(error or "nacked")
        msg = d.message
        assert msg is not None
        if delay is not None:
            await broker.release(agent, d, delay=delay, error=_error_text(exc))
            if self.telemetry is not None:
                self.telemetry.on_settle(agent, msg.message_type.value, "nacked")
            return
        await self._failed(agent, d, msg, exc)

    # ------------------------------------------------------------------ dead letters

    def _dead_message(self, dl: DeadLetter) -> Message:
        msg = dl.message
        if msg is None:
            try:
                msg, _ = decode(
                    dl.body or b"",
                    max_bytes=self.config.max_message_bytes,
                    keys=self.security.content_key if self.security is not None else None,
                )
            except MessagingError as exc:
                import base64

                raw = dl.body or b""
                msg = Message(
                    message_id=dl.message_id,
                    message_type=MessageType.ERROR,
                    sender_id="unknown",
                    recipient_id=dl.queue,
                    content={
                        "raw_base64": base64.b64encode(raw[:65536]).decode(),
                        "raw_size": len(raw),
                        "decode_error": _error_text(exc),
                    },
                )
        else:
            msg = msg.copy()
        msg.metadata.update(
            {
                DLQ_REASON: dl.reason,
                DLQ_ERROR: dl.error,
                DLQ_QUEUE: dl.queue,
                DLQ_ATTEMPTS: dl.attempts,
                DLQ_AT: dl.dead_lettered_at,
            }
        )
        return msg

    async def get_dead_letter_messages(self, agent_id: str, limit: int = 100) -> list[Message]:
        """The agent's dead-lettered messages, oldest first. Each carries why in its metadata:
        ``aos.dead_letter.reason`` (max_attempts, expired, undecodable, ...),
        ``aos.dead_letter.error`` (the last error), ``aos.dead_letter.attempts``."""
        broker = self._check()
        return [self._dead_message(dl) for dl in await broker.dead_letters(agent_id, limit)]

    async def resubmit(self, message: Message | str, agent_id: str | None = None) -> None:
        """Put a dead letter back into its queue (attempts reset)."""
        broker = self._check()
        if isinstance(message, Message):
            message_id = message.message_id
            queue = agent_id or message.metadata.get(DLQ_QUEUE) or message.recipient_id
        else:
            message_id = message
            queue = agent_id
        if not queue:
            raise InvalidMessageError("resubmit() cannot tell the queue: pass agent_id")
        if not await broker.resubmit(queue, message_id):
            raise UnknownMessageError(
                f"no dead letter {message_id!r} in {queue!r} (already resubmitted or purged?)"
            )

    async def purge_dead_letters(self, agent_id: str) -> int:
        """Delete an agent's dead letters; return how many."""
        return await self._check().purge_dead_letters(agent_id)

    # ------------------------------------------------------------------ introspection

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """The agents this bus consumes for, each with its running subscription (a copy)."""
        return dict(self._subs)

    async def queue_depth(self, agent_id: str) -> int:
        """Messages waiting in (or locked from) the agent's queue."""
        return await self._check().depth(agent_id)

    async def dead_letter_depth(self, agent_id: str) -> int:
        """Messages in the agent's dead-letter queue."""
        return await self._check().dead_letter_depth(agent_id)

    async def queues(self) -> list[str]:
        """Queues that hold messages or dead letters."""
        return await self._check().queues()

    # ------------------------------------------------------------------ security

    def verify_sender(self, message: Message) -> bool:
        """True when ``message`` carries a valid signature by its sender's key."""
        if not isinstance(message, Message):
            return False
        if self.security is None:
            from ..codec.security import BusSecurity

            self.security = BusSecurity(self.config, self.storage)
        return self.security.verify(message)

    async def set_permissions(
        self,
        agent_id: str,
        can_publish: list[str] | None = None,
        can_subscribe: list[str] | None = None,
    ) -> None:
        """Restrict what an agent may publish and receive (message type names)."""
        self._check()
        assert self.security is not None
        await self.security.set_permissions(agent_id, can_publish, can_subscribe)

    def add_encryption_key(self, key: bytes) -> str:
        """Make a content key known to this bus's consumers (this process only); returns its
        key id. See :meth:`store_encryption_key` to share it through the key ring."""
        if self.security is None:
            from ..codec.security import BusSecurity

            self.security = BusSecurity(self.config, self.storage)
        return self.security.remember_content_key(key)

    async def store_encryption_key(self, key: bytes) -> str:
        """Add a content key to the key ring in the bus's store, so every process using the
        same store can decrypt with it; returns its key id."""
        from ..codec.security import BusSecurity

        self._check()
        security = self.security
        if not isinstance(security, BusSecurity):
            raise ConfigurationError("this bus's security layer keeps no key ring")
        return await security.store_content_key(key)

    async def register_agent_keys(self, agent_id: str, *, rotate: bool = False) -> bytes:
        """Give ``agent_id`` a signing key in this process (kept in ``data_dir/keys``) with
        its public key in the key ring; returns the raw Ed25519 public key. Idempotent;
        ``rotate=True`` makes a new key pair."""
        from ..codec.security import BusSecurity

        self._check()
        security = self.security
        if not isinstance(security, BusSecurity):
            raise ConfigurationError("this bus's security layer keeps no key ring")
        return await security.register_agent_keys(agent_id, rotate=rotate)

    # ------------------------------------------------------------------ streams

    def stream_events(
        self,
        event_types: Iterable[str] | None = None,
        *,
        agent_id: str | None = None,
    ) -> EventStream:
        """Iterate over EVENT messages whose ``content["event"]`` (or ``"event_type"``) is in
        ``event_types`` (all events when None). ``async for`` it; closing the iterator
        (``aclose()``, ``break`` inside ``async with``, or ``stop()``) removes its queue."""
        self._check()
        security = self.security
        if security is not None and security.acl_active:
            security.authorize_subscribe(
                agent_id or self.config.default_sender_id, MessageType.EVENT
            )
        names = None if event_types is None else frozenset(event_types)
        return EventStream(self, names, agent_id)


class EventStream:
    """An async iterator over matching events, with its own temporary queue."""

    def __init__(self, bus: MessageBus, names: frozenset[str] | None, agent_id: str | None):
        self._bus = bus
        self._names = names
        self.queue = f"_stream.{agent_id or 'anon'}.{new_message_id()[:12]}"
        self.ready = asyncio.Event()
        self._closed = False
        self._buffer: list[Message] = []

    def __aiter__(self) -> EventStream:
        return self

    async def _open(self) -> None:
        if not self.ready.is_set():
            await self._bus._bind(MessageType.EVENT.value, self.queue)
            self._bus._streams.add(self)
            self.ready.set()

    async def __aenter__(self) -> EventStream:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _matches(self, msg: Message) -> bool:
        if self._names is None:
            return True
        name = msg.content.get("event", msg.content.get("event_type"))
        return isinstance(name, str) and name in self._names

    async def __anext__(self) -> Message:
        if self._closed:
            raise StopAsyncIteration
        await self._open()
        bus = self._bus
        broker = bus.broker
        while not self._closed:
            if self._buffer:
                return self._buffer.pop(0)
            try:
                batch = await broker.receive(self.queue, 64, bus.config.lock_seconds)
            except BrokerClosedError:
                break
            if not batch:
                await broker.wait(self.queue, bus.config.poll_interval)
                continue
            done: list[Delivery] = []
            for d in batch:
                msg = await bus._admit(self.queue, d)
                if msg is None:
                    continue
                done.append(d)
                if self._matches(msg):
                    self._buffer.append(msg)
            if done:
                await broker.ack(self.queue, done)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the stream and remove its queue and binding."""
        if self._closed:
            return
        self._closed = True
        bus = self._bus
        bus._streams.discard(self)
        if self.ready.is_set() and bus._broker is not None:
            try:
                await bus._unbind(MessageType.EVENT.value, self.queue)
                await bus._broker.delete_queue(self.queue)
            except BrokerClosedError:
                pass
