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

The bus is a facade over its parts, each in its own module: the publish path
(:mod:`.publish`), the one consume loop (:mod:`.consume`) run by subscriptions
(:mod:`.subscriptions`), the reply listener (:mod:`.requests`) and event streams
(:mod:`.streams`), admission and failure (:mod:`.admit`), the pull side (:mod:`.pull`),
dead letters (:mod:`.deadletters`) and the collector of reply queues left by requesters that
are gone (:mod:`.collect`). They share one :class:`~.state.Core`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Iterable, Unpack

from ...config.messagebus import MessageBusConfig
from ..brokers import open_broker
from ..brokers.base import Broker
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import BrokerClosedError, ConfigurationError, InvalidMessageError
from ..types import Message, MessagePriority, MessageType
from .admit import Admission
from .collect import Collector
from .consume import Consumer, Handle, LockRenewal
from .deadletters import DeadLetters
from .hooks import SecurityHooks, TelemetryHooks
from .publish import BatchOptions, Publisher, PublishOptions, PublishResult
from .pull import Pull
from .requests import Requests
from .state import Core
from .streams import EventStream, StreamHost
from .subscriptions import Handler, Subscription, Subscriptions

if TYPE_CHECKING:  # imported when needed: it loads the cryptography package
    from ..codec.security import BusSecurity

__all__ = ["EventStream", "Handler", "MessageBus", "PublishResult", "Subscription"]


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
        self.storage = storage
        core = self._core = Core(
            self.config,
            self.clock,
            broker=broker,
            router=router,
            security=security,
            telemetry=telemetry,
            storage=storage,
        )
        self._owns_broker = broker is None
        self._security_given = security
        self._lock = asyncio.Lock()
        self._admission = admission = Admission(core)
        self._publisher = publisher = Publisher(core)
        self._requests = requests = Requests(core, admission, publisher)
        admission.respond = requests.respond
        self._subscriptions = Subscriptions(core, admission, publisher, requests.respond)
        self._pull = Pull(core, admission)
        self._dead_letters = DeadLetters(core, admission)
        self._collector = collector = Collector(core, admission)
        self._stream_host = StreamHost(
            self._consumer,
            publisher.bind,
            publisher.unbind,
            self._delete_queue,
            self._prepare_queue,
            instance_id=core.instance_id,
            alive=collector.beat,
            quiet=collector.quiet,
        )
        self._streams = self._stream_host.streams
        collector.open_streams = lambda: [s.queue for s in self._streams]
        self._renewal = LockRenewal(core, self._held_by)
        self.instance_id = core.instance_id
        self.reply_queue = core.reply_queue

    # ------------------------------------------------------------------ state

    @property
    def broker(self) -> Broker:
        """The engine (after ``start()``)."""
        return self._core.engine

    @property
    def started(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._core.started and not self._core.stopping

    @property
    def router(self) -> Any:
        """The router asked for the target of a message without a recipient (or None)."""
        return self._core.router

    @router.setter
    def router(self, router: Any) -> None:
        self._core.router = router

    @property
    def security(self) -> SecurityHooks | None:
        """The security layer: signing, key ring, access control (after ``start()``)."""
        return self._core.security

    @property
    def telemetry(self) -> TelemetryHooks | None:
        """Tracing and metrics hooks (None: off); may be set while the bus runs."""
        return self._core.telemetry

    @telemetry.setter
    def telemetry(self, telemetry: TelemetryHooks | None) -> None:
        self._core.telemetry = telemetry

    @property
    def security_signing(self) -> bool:
        """True when every published message is signed."""
        return self._core.signing

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """The agents this bus consumes for, each with its running subscription (a copy)."""
        return dict(self._subscriptions.subs)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> MessageBus:
        """Open the engine and the security layer; idempotent."""
        core = self._core
        async with self._lock:
            if core.started:
                return self
            if core.stopping:
                raise BrokerClosedError("a stopped bus cannot be restarted; create a new one")
            if core.broker is None:
                core.broker = await open_broker(
                    self.config.resolved_broker_url(),
                    clock=self.clock,
                    dedup_window=self.config.dedup_window_seconds,
                )
            await self._ensure_security().start()
            if core.telemetry is None and (
                self.config.enable_tracing or self.config.enable_metrics
            ):
                from ..observability.telemetry import BusTelemetry

                core.telemetry = BusTelemetry(self.config, clock=self.clock)
            core.attach(core.broker)
            core.started = core.running = True
            self._renewal.start()
            self._collector.start()
            return self

    async def stop(self, timeout: float | None = None) -> None:
        """Stop fetching, let running handlers finish (up to ``timeout``, default
        ``config.shutdown_timeout``), release what was fetched but not started, close."""
        core = self._core
        if not core.started or core.stopping:
            core.stopping = True
            return
        core.stopping = True
        core.running = False
        deadline = self.config.shutdown_timeout if timeout is None else timeout
        await self._collector.stop()
        consumers = list(self._subscriptions.consumers())
        tasks: list[asyncio.Task[None]] = []
        for consumer in consumers:
            if consumer.task is not None:
                consumer.close()
                tasks.append(consumer.task)
            tasks.extend(consumer.running)
        await self._stream_host.close_all()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for consumer in consumers:
            await consumer.release_held()
        await self._requests.stop()
        await self._renewal.stop()
        if core.security is not None and self._security_given is None:
            await core.security.close()
        if self._owns_broker and core.broker is not None:
            await core.broker.close()
        core.started = False

    async def __aenter__(self) -> MessageBus:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _ensure_security(self) -> SecurityHooks:
        """The security layer, made from the config when none was given."""
        security = self._core.security
        if security is None:
            from ..codec.security import BusSecurity

            security = self._core.security = BusSecurity(self.config, self.storage)
        return security

    def _consumer(self, queue: str, handle: Handle) -> Consumer:
        """A consumer of ``queue`` with this bus's loop (for event streams)."""
        return Consumer(self._core, self._admission, queue, handle)

    def _held_by(self) -> list[Consumer]:
        """The consumers whose held deliveries have their locks renewed."""
        return [*self._subscriptions.consumers(), self._requests.listener]

    async def _delete_queue(self, queue: str) -> None:
        await self._core.engine.delete_queue(queue)

    async def _prepare_queue(self, queue: str) -> None:
        await self._core.engine.prepare(queue)

    # ------------------------------------------------------------------ publish

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
        publisher = self._publisher
        if not options and type(message) is Message and publisher.put_plain(message):
            return PublishResult(message.message_id, (message.recipient_id,))  # type: ignore[arg-type]
        return await publisher.publish(message, options)

    async def publish_batch(
        self, messages: Iterable[Message], **options: Unpack[BatchOptions]
    ) -> list[PublishResult]:
        """Publish several messages in one engine call (one transaction where the engine has
        them): all are enqueued, or none (``QueueFullError``).

        Keyword options, for every message of the batch: ``delivery_mode``,
        ``retry_policy``, ``compress``, ``compression_algorithm``, ``encrypt``,
        ``encryption_key``, ``delay`` (:meth:`.publish.Publisher.publish_batch`)."""
        return await self._publisher.publish_batch(messages, **options)

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
        return await self._requests.request(
            sender_id,
            recipient_id,
            content,
            timeout,
            message_type,
            priority,
            metadata,
            publish_options,
        )

    async def reply(
        self, request: Message, content: dict[str, Any], *, sender_id: str | None = None
    ) -> PublishResult | None:
        """Answer a request explicitly (a handler can also just return the content)."""
        return await self._requests.respond(request, content, sender_id=sender_id)

    # ------------------------------------------------------------------ consuming

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
        delivered to this agent from now on (a durable binding). Returns once the engine is
        ready to deliver to it (``Broker.prepare``); an idle subscription costs nothing."""
        return await self._subscriptions.subscribe(
            agent_id, message_types, handler, max_concurrency
        )

    async def unsubscribe(self, agent_id: str, *, unbind: bool = True) -> None:
        """Stop the agent's consumer (after its current message) and, by default, remove its
        event bindings."""
        await self._subscriptions.unsubscribe(agent_id, unbind=unbind)

    def stream_events(
        self,
        event_types: Iterable[str] | None = None,
        *,
        agent_id: str | None = None,
    ) -> EventStream:
        """Iterate over EVENT messages whose ``content["event"]`` (or ``"event_type"``) is in
        ``event_types`` (all events when None). ``async for`` it; closing the iterator
        (``aclose()``, ``break`` inside ``async with``, or ``stop()``) removes its queue."""
        self._core.check()
        security = self._core.security
        if security is not None and security.acl_active:
            security.authorize_subscribe(
                agent_id or self.config.default_sender_id, MessageType.EVENT
            )
        names = None if event_types is None else frozenset(event_types)
        return EventStream(self._stream_host, names, agent_id)

    # ------------------------------------------------------------------ pull side

    async def get_messages(self, agent_id: str, limit: int = 10) -> list[Message]:
        """Lock and return up to ``limit`` messages of ``agent_id``'s queue (priority, then
        FIFO). Settle each with :meth:`acknowledge` or :meth:`nack`; an unsettled message is
        delivered again when its lock (``lock_seconds``) expires."""
        return await self._pull.get_messages(agent_id, limit)

    async def receive(self, agent_id: str, timeout: float | None = None) -> Message | None:
        """Lock and return one message, waiting up to ``timeout`` seconds (None: until one
        comes); ``None`` when the time passes with none."""
        return await self._pull.receive(agent_id, timeout)

    async def acknowledge(self, message_id: str, agent_id: str | None = None) -> None:
        """Settle a message received with :meth:`get_messages`/:meth:`receive` as done.

        Raises :class:`LockLostError` when its lock expired first (it may be redelivered)."""
        await self._pull.acknowledge(message_id, agent_id)

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
        await self._pull.nack(message_id, agent_id, error, delay)

    # ------------------------------------------------------------------ dead letters

    async def get_dead_letter_messages(self, agent_id: str, limit: int = 100) -> list[Message]:
        """The agent's dead-lettered messages, oldest first. Each carries why in its metadata:
        ``aos.dead_letter.reason`` (max_attempts, expired, undecodable, ...),
        ``aos.dead_letter.error`` (the last error), ``aos.dead_letter.attempts``."""
        return await self._dead_letters.list(agent_id, limit)

    async def resubmit(self, message: Message | str, agent_id: str | None = None) -> None:
        """Put a dead letter back into its queue (attempts reset)."""
        await self._dead_letters.resubmit(message, agent_id)

    async def purge_dead_letters(self, agent_id: str) -> int:
        """Delete an agent's dead letters; return how many."""
        return await self._core.check().purge_dead_letters(agent_id)

    # ------------------------------------------------------------------ introspection

    async def queue_depth(self, agent_id: str) -> int:
        """Messages waiting in (or locked from) the agent's queue."""
        return await self._core.check().depth(agent_id)

    async def dead_letter_depth(self, agent_id: str) -> int:
        """Messages in the agent's dead-letter queue."""
        return await self._core.check().dead_letter_depth(agent_id)

    async def queues(self) -> list[str]:
        """Queues that hold messages or dead letters."""
        return await self._core.check().queues()

    # ------------------------------------------------------------------ security

    def verify_sender(self, message: Message) -> bool:
        """True when ``message`` carries a valid signature by its sender's key."""
        if not isinstance(message, Message):
            return False
        return self._ensure_security().verify(message)

    async def set_permissions(
        self,
        agent_id: str,
        can_publish: list[str] | None = None,
        can_subscribe: list[str] | None = None,
    ) -> None:
        """Restrict what an agent may publish and receive (message type names)."""
        self._core.check()
        assert self._core.security is not None
        await self._core.security.set_permissions(agent_id, can_publish, can_subscribe)

    def add_encryption_key(self, key: bytes) -> str:
        """Make a content key known to this bus's consumers (this process only); returns its
        key id. See :meth:`store_encryption_key` to share it through the key ring."""
        return self._ensure_security().remember_content_key(key)

    async def store_encryption_key(self, key: bytes) -> str:
        """Add a content key to the key ring in the bus's store, so every process using the
        same store can decrypt with it; returns its key id."""
        return await self._key_ring().store_content_key(key)

    async def register_agent_keys(self, agent_id: str, *, rotate: bool = False) -> bytes:
        """Give ``agent_id`` a signing key in this process (kept in ``data_dir/keys``) with
        its public key in the key ring; returns the raw Ed25519 public key. Idempotent;
        ``rotate=True`` makes a new key pair."""
        return await self._key_ring().register_agent_keys(agent_id, rotate=rotate)

    def _key_ring(self) -> BusSecurity:
        """The security layer when it keeps a key ring (``BusSecurity``)."""
        from ..codec.security import BusSecurity

        self._core.check()
        security = self._core.security
        if not isinstance(security, BusSecurity):
            raise ConfigurationError("this bus's security layer keeps no key ring")
        return security
