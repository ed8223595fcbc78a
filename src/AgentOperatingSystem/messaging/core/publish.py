"""The one publish path: every message the bus enqueues goes through :meth:`Publisher.send`.

Its stages, in order, for each message:

1. **build** -- a :class:`Message` from keyword fields, and its delivery options (hop count
   and causation id from the delivery a handler is running for, :mod:`.context`);
2. **guard** -- access control (``authorize_publish``, with the message being answered);
3. **route** -- the queues: the recipient, else the router's target, else (events) every
   queue bound to the type;
4. **observe** -- the telemetry context around the send (a span, or counters);
5. **sign** and **encode** -- one envelope per queue (CloudEvents bytes when the engine,
   sealing or signing needs them);
6. **deliver** -- into the handler's exactly-once outbox, else straight to a live listener
   when the engine has :class:`~..brokers.base.DirectDelivery` (a response to a waiting
   requester, a request handed off), else the engine's ``send`` (dedup, queue limit).

A *plain* message (a Message with one recipient, no options, TTL, guard or handler context)
is told by one cheap check, :meth:`Publisher.put_plain`, which ``publish()`` and
``request()`` try first: on an engine with :class:`~..brokers.base.LocalPut` its deliver
stage is ``put_local`` and the other stages have nothing to do, so it is put at once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Mapping, NamedTuple, Sequence, TypedDict

from ..brokers.base import Envelope
from ..codec.envelope import COMPRESSION_ALGORITHMS, EncodeOptions, encode
from ..errors import InvalidMessageError, RoutingError
from ..policy import DEFAULT_OPTIONS, DeliveryOptions, RetryPolicy
from ..types import (
    BROADCAST_TYPES,
    MESSAGE_FIELDS,
    DeliveryMode,
    Message,
    MessagePriority,
    MessageType,
)
from .context import current
from .state import Core

__all__ = ["BatchOptions", "PublishOptions", "PublishResult", "Publisher"]


class PublishResult(NamedTuple):
    """What a publish did: the queues it reached; ``duplicate`` when deduplication kept it out."""

    message_id: str
    recipients: tuple[str, ...]
    duplicate: bool = False


class BatchOptions(TypedDict, total=False):
    """Keyword arguments of :meth:`MessageBus.publish_batch`: the delivery options that apply
    to every message of the batch (the defaults are :meth:`Publisher.publish_batch`'s)."""

    delivery_mode: str | DeliveryMode
    retry_policy: RetryPolicy | Mapping[str, Any] | None
    compress: bool
    compression_algorithm: str
    encrypt: bool
    encryption_key: bytes | None
    delay: float | None


class PublishOptions(BatchOptions, total=False):
    """Keyword arguments of :meth:`MessageBus.publish`: message fields (when no Message is
    passed) and delivery options (those of :class:`BatchOptions`, an idempotency key and
    ``deliver_at``)."""

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
    idempotency_key: str
    deliver_at: Any
    #: Enqueue on this queue instead of routing (a node putting an answer that came over the
    #: network on the reply queue it is for).
    queue: str
    #: The delivery options the message came with from another node: its hop count, causation
    #: id and extras are kept, so the loop guard counts hops across nodes.
    delivery_options: DeliveryOptions


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
        "queue",
        "delivery_options",
    }
)
_KNOWN = _OPTION_FIELDS | frozenset(MESSAGE_FIELDS)
_SEAL_KEYS = ("compress", "compression_algorithm", "encrypt", "encryption_key")

Item = tuple[Message, DeliveryOptions]


class Publisher:
    """The publish path of one bus (see the module docstring), and the fan-out bindings it
    routes by."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._bindings_cache: dict[str, tuple[float, list[str]]] = {}

    # ------------------------------------------------------------------ entry points

    async def publish(self, message: Message | None, options: Mapping[str, Any]) -> PublishResult:
        """:meth:`MessageBus.publish` of a message that is not put plain (the facade tries
        :meth:`put_plain` first): build it (nothing to do for a Message), then send."""
        if not options and type(message) is Message:
            self._core.check()
            opts = (
                DEFAULT_OPTIONS
                if current.get() is None
                else self.options(DeliveryMode.AT_LEAST_ONCE)
            )
            return (await self.send([(message, opts)], None, 0.0))[0]
        msg, opts, seal, available_at = self.parse(message, options)
        queue = options.get("queue")
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise InvalidMessageError("queue must be a non-empty string")
        return (await self.send([(msg, opts)], seal, available_at, to=queue))[0]

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
        """:meth:`MessageBus.publish_batch`: one engine call for all the messages."""
        self._core.check()
        msgs = list(messages)
        for m in msgs:
            if not isinstance(m, Message):
                raise InvalidMessageError(f"publish_batch() takes Messages, not {type(m).__name__}")
        options = self.options(delivery_mode, None, retry_policy)
        seal = self.seal(compress, compression_algorithm, encrypt, encryption_key)
        return await self.send([(m, options) for m in msgs], seal, self.available_at(delay, None))

    def put_plain(self, msg: Message) -> bool:
        """The plain check and, on a LocalPut engine, the deliver stage of a plain message:
        ``put_local``, observed like any publish. False: the message takes :meth:`send`.

        Plain: one recipient, no TTL (nor a default one), no access control or signing to
        apply, not published by a handler; the caller has checked it has no options."""
        core = self._core
        put = core.local_put
        sec = core.security
        if (
            put is None
            or msg.recipient_id is None
            or msg.ttl is not None
            or not core.running
            or (sec is not None and (sec.acl_active or sec.signing))
            or core.config.message_ttl_seconds is not None
            or current.get() is not None
        ):
            return False
        queue = msg.recipient_id
        max_depth = core.config.max_queue_size
        tel = core.telemetry
        if tel is None:
            put(queue, msg, max_depth)
        elif not tel.per_message:
            put(queue, msg, max_depth)
            counts = tel.published_counts
            key = (queue, msg.message_type._value_)
            counts[key] = counts.get(key, 0) + 1
        else:
            with tel.on_publish(msg, [queue]):
                put(queue, msg, max_depth)
        return True

    # ------------------------------------------------------------------ the path

    async def send(
        self,
        items: Sequence[Item],
        seal: EncodeOptions | None,
        available_at: float,
        *,
        to: str | None = None,
        hand_off: float = 0.0,
        reply_for: str | None = None,
        outbox: bool = True,
    ) -> list[PublishResult]:
        """Enqueue ``items`` (stages 2 to 6). ``to``: this queue instead of routing;
        ``hand_off`` (seconds, request() only): first offer a lone envelope to a live
        consumer, waiting that long for its answer; ``reply_for``: the request a response
        answers (tried on a live listener first); ``outbox=False``: send now even inside an
        exactly-once handler."""
        core = self._core
        security = core.security
        assert security is not None
        telemetry = core.telemetry
        plan: list[tuple[Message, list[str], list[Envelope]]] = []
        spans: list[Any] = []
        running = current.get()
        answering = running.message if running is not None else None
        try:
            for msg, options in items:
                if security.acl_active:
                    security.authorize_publish(msg.sender_id, msg.message_type, answering)
                if to is not None:
                    queues = [to]
                elif msg.recipient_id is not None:
                    queues = [msg.recipient_id]
                else:
                    queues = await self._route(msg)
                if telemetry is not None:
                    span = telemetry.on_publish(msg, queues)
                    span.__enter__()
                    spans.append(span)
                if security.signing:
                    await security.sign(msg)
                plan.append(
                    (msg, queues, self._envelopes(msg, options, queues, seal, available_at))
                )
            envelopes = plan[0][2] if len(plan) == 1 else [e for _, _, es in plan for e in es]
            if (
                outbox
                and running is not None
                and running.outbox is not None
                and (running.owner is core)
            ):
                running.outbox.extend(envelopes)
                flags = [True] * len(envelopes)
            elif (
                core.direct is not None
                and len(envelopes) == 1
                and await self._direct(envelopes[0], hand_off, reply_for)
            ):
                flags = [True]
            elif envelopes:
                flags = await core.engine.send(
                    envelopes,
                    max_depth=core.config.max_queue_size,
                    dedup_window=core.config.dedup_window_seconds,
                )
            else:
                flags = []
        except BaseException as exc:
            for span in spans:
                span.__exit__(type(exc), exc, exc.__traceback__)
            raise
        for span in spans:
            span.__exit__(None, None, None)
        return _results(plan, flags)

    async def _direct(self, env: Envelope, hand_off: float, reply_for: str | None) -> bool:
        """Deliver ``env`` to a live listener, storing nothing (engines with DirectDelivery):
        a response to a requester waiting right now, or a request a live consumer takes."""
        core = self._core
        direct = core.direct
        assert direct is not None
        if reply_for is not None:
            return env.queue.startswith("_reply.") and await direct.send_direct(
                env, reply_for=reply_for
            )
        return (
            hand_off > 0
            and core.hand_off is not None
            and env.options.delivery_mode is DeliveryMode.AT_LEAST_ONCE
            and await core.hand_off(env, reply_queue=core.reply_queue, wait=hand_off)
        )

    # ------------------------------------------------------------------ build

    def parse(
        self, message: Message | None, options: Mapping[str, Any]
    ) -> tuple[Message, DeliveryOptions, EncodeOptions | None, float]:
        """:meth:`MessageBus.publish`'s arguments: the message, its options, sealing and the
        time it becomes available."""
        self._core.check()
        given: dict[str, Any] = dict(options)
        if "message" in given:
            if message is not None:
                raise InvalidMessageError("pass the message once, not also as message=")
            message = given.pop("message")
        unknown = set(given) - _KNOWN
        if unknown:
            raise InvalidMessageError(f"unknown publish() options {sorted(unknown)}")
        msg = self.build(message, {k: given.get(k) for k in MESSAGE_FIELDS})
        opts = self.options(
            given.get("delivery_mode", DeliveryMode.AT_LEAST_ONCE),
            given.get("idempotency_key"),
            given.get("retry_policy"),
        )
        carried = given.get("delivery_options")
        if carried is not None:
            opts = _carry(opts, carried)
        seal = self.seal(
            bool(given.get("compress", False)),
            given.get("compression_algorithm", "gzip"),
            bool(given.get("encrypt", False)),
            given.get("encryption_key"),
        )
        return msg, opts, seal, self.available_at(given.get("delay"), given.get("deliver_at"))

    def parse_request(
        self, options: dict[str, Any]
    ) -> tuple[DeliveryOptions, EncodeOptions | None]:
        """:meth:`MessageBus.request`'s delivery options (``options`` is consumed)."""
        opts = self.options(
            options.pop("delivery_mode", DeliveryMode.AT_LEAST_ONCE),
            options.pop("idempotency_key", None),
            options.pop("retry_policy", None),
        )
        seal = self.seal(
            options.pop("compress", False),
            options.pop("compression_algorithm", "gzip"),
            options.pop("encrypt", False),
            options.pop("encryption_key", None),
        )
        if options:
            raise InvalidMessageError(f"unknown request() options {sorted(options)}")
        return opts, seal

    def build(self, message: Message | None, fields: Mapping[str, Any]) -> Message:
        """The message given, or one built from the keyword fields."""
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
        given.setdefault("sender_id", self._core.config.default_sender_id)
        return Message(**given)

    def options(
        self,
        delivery_mode: str | DeliveryMode,
        idempotency_key: str | None = None,
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
    ) -> DeliveryOptions:
        """Delivery options; inside a handler they carry its hop count and causation id.
        ``DEFAULT_OPTIONS`` (the same object) when there is nothing to carry."""
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
        running = current.get()
        if (
            running is None
            and mode is DeliveryMode.AT_LEAST_ONCE
            and idempotency_key is None
            and policy is None
        ):
            return DEFAULT_OPTIONS
        return DeliveryOptions(
            delivery_mode=mode,
            idempotency_key=idempotency_key,
            retry_policy=policy,
            hops=(running.options.hops + 1) if running is not None else 0,
            causation_id=running.message.message_id if running is not None else None,
        )

    def seal(
        self,
        compress: bool,
        compression_algorithm: str,
        encrypt: bool,
        encryption_key: bytes | None,
    ) -> EncodeOptions | None:
        """Compression and encryption of the content (None: neither)."""
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
            assert self._core.security is not None
            self._core.security.remember_content_key(key)
        return EncodeOptions(compression_algorithm if compress else None, key)

    def available_at(self, delay: float | None, deliver_at: Any) -> float:
        """When the message becomes deliverable (epoch seconds; 0.0: now)."""
        if delay is None and deliver_at is None:
            return 0.0
        if delay is not None and deliver_at is not None:
            raise InvalidMessageError("pass delay or deliver_at, not both")
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
                raise InvalidMessageError("delay must be a number of seconds >= 0")
            return self._core.clock.now() + float(delay)
        stamp = getattr(deliver_at, "timestamp", None)
        if stamp is None or getattr(deliver_at, "tzinfo", None) is None:
            raise InvalidMessageError("deliver_at must be an aware datetime")
        return float(stamp())

    # ------------------------------------------------------------------ route

    async def _route(self, message: Message) -> list[str]:
        """The router's target, else (events) every queue bound to the type."""
        router = self._core.router
        if router is not None:
            target = await router.route_async(message, depth=self._depth)
            if target is not None:
                return [target]
        if message.message_type in BROADCAST_TYPES:
            return await self._bound(message.message_type.value)
        raise RoutingError(
            f"{message.message_type.value} message {message.message_id} names no recipient_id"
            " and no routing rule matched it"
        )

    async def _depth(self, queue: str) -> int:
        """A queue's depth, for the router's load-based rules."""
        return await self._core.check().depth(queue)

    async def bind(self, topic: str, queue: str) -> None:
        """Bind ``queue`` to ``topic`` (fan-out) and forget the cached bindings."""
        await self._core.engine.bind(topic, queue)
        self._bindings_cache.pop(topic, None)

    async def unbind(self, topic: str, queue: str) -> None:
        """Remove a binding and forget the cached bindings."""
        await self._core.engine.unbind(topic, queue)
        self._bindings_cache.pop(topic, None)

    async def _bound(self, topic: str) -> list[str]:
        """The queues bound to ``topic``; an engine in another process is asked once a
        second at most (other processes' bindings show within that)."""
        broker = self._core.engine
        if not broker.needs_bytes:
            return await broker.bindings(topic)
        now = self._core.clock.monotonic()
        cached = self._bindings_cache.get(topic)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        queues = await broker.bindings(topic)
        self._bindings_cache[topic] = (now, queues)
        return queues

    # ------------------------------------------------------------------ encode

    def _envelopes(
        self,
        message: Message,
        options: DeliveryOptions,
        queues: Sequence[str],
        seal: EncodeOptions | None,
        available_at: float,
    ) -> list[Envelope]:
        """One envelope per queue; bytes when the engine, sealing or signing needs them."""
        core = self._core
        config = core.config
        ttl = message.ttl if message.ttl is not None else config.message_ttl_seconds
        expires = core.clock.now() + ttl if ttl is not None else None
        body: bytes | None = None
        if core.engine.needs_bytes or seal is not None or core.signing:
            body = encode(message, options, seal, max_bytes=config.max_message_bytes)
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


def _carry(options: DeliveryOptions, carried: DeliveryOptions) -> DeliveryOptions:
    """``options`` with the hop count, causation id and extras of ``carried`` (the options a
    message came with from another node)."""
    if not isinstance(carried, DeliveryOptions):
        raise InvalidMessageError("delivery_options must be a DeliveryOptions")
    if not carried.hops and carried.causation_id is None and not carried.extras:
        return options
    return replace(
        options,
        hops=max(options.hops, carried.hops),
        causation_id=carried.causation_id or options.causation_id,
        extras={**carried.extras, **options.extras},
    )


def _results(
    plan: list[tuple[Message, list[str], list[Envelope]]], flags: list[bool]
) -> list[PublishResult]:
    """Per message, the queues that took it (``flags``: per envelope, in plan order)."""
    if len(flags) == 1 and len(plan) == 1:  # one message to one queue
        msg, queues, _ = plan[0]
        if flags[0]:
            return [PublishResult(msg.message_id, (queues[0],))]
        return [PublishResult(msg.message_id, (), duplicate=True)]
    results: list[PublishResult] = []
    i = 0
    for msg, queues, envs in plan:
        ok = flags[i : i + len(envs)]
        i += len(envs)
        reached = tuple(q for q, f in zip(queues, ok) if f)
        results.append(PublishResult(msg.message_id, reached, duplicate=bool(envs) and not any(ok)))
    return results
