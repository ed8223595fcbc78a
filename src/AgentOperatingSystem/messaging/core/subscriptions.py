"""Subscriptions: an agent's handlers, run by a :class:`~.consume.Consumer` of its queue.

:class:`Dispatch` is what a subscription's consumer does with an admitted message: check the
agent may still receive its type, pick the handler for the type, call it inside the delivery
context (:mod:`.context`, with an outbox for exactly-once), answer a request with the
handler's return value, and settle: a handler that returns acks (exactly-once: with the
processed key and the outbox, in one transaction), one that raises nacks (retry policy, then
the dead-letter queue).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass, field
from time import perf_counter
from types import CoroutineType
from typing import Any, Awaitable, Callable, Iterable, Union

from ..brokers.base import Delivery, Envelope
from ..errors import ConfigurationError, InvalidMessageError, MessagingError
from ..errors import error_text as _error_text
from ..types import BROADCAST_TYPES, REQUEST_TYPES, DeliveryMode, Message, MessageType
from .admit import Admission, Respond, processed_key
from .consume import Consumer, Samples
from .context import Current, current
from .publish import Publisher
from .state import Core

__all__ = ["Dispatch", "Handler", "Subscription", "Subscriptions"]

log = logging.getLogger("aos.messaging.bus")

Handler = Callable[[Message], Union[Awaitable[Any], Any]]
"""A subscription handler: sync or async; its return value answers a request."""


@dataclass
class Subscription:
    """A running consumer of one agent's queue.

    ``handlers`` maps a message type (None: any type) to its handler.
    """

    agent_id: str
    handlers: dict[MessageType | None, Handler]
    max_concurrency: int
    consumer: Consumer | None = field(default=None, repr=False)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The consumer's task."""
        return self.consumer.task if self.consumer is not None else None

    @property
    def busy(self) -> bool:
        """True while the consumer receives or handles a batch."""
        return self.consumer is not None and self.consumer.busy

    @property
    def held(self) -> dict[str, Delivery]:
        """Deliveries received and not yet settled, by message id."""
        return self.consumer.held if self.consumer is not None else {}

    @property
    def running(self) -> set[asyncio.Task[None]]:
        """Handler tasks running concurrently (``max_concurrency`` > 1)."""
        return self.consumer.running if self.consumer is not None else set()


@dataclass(slots=True, eq=False, repr=False)
class Dispatch:
    """A subscription's ``handle`` for its consumer (see the module docstring)."""

    _core: Core
    _admission: Admission
    _respond: Respond
    _sub: Subscription

    async def handle(self, d: Delivery, msg: Message, samples: Samples | None) -> bool:
        """Call the handler for ``msg`` in the delivery context, observed, and answer a
        request with its result. True: ack it with the batch; False: settled here."""
        core = self._core
        queue = self._sub.agent_id
        security = core.security
        if security is not None and security.acl_active and not await self._may_receive(d, msg):
            return False
        handlers = self._sub.handlers
        handler = handlers.get(msg.message_type) or handlers.get(None)
        if handler is None:
            error = f"{queue!r} has no handler for {msg.message_type.value!r}"
            await self._admission.dead_letter(queue, d, msg, "no_handler", None, error_text=error)
            return False
        mode = d.options.delivery_mode
        outbox: list[Envelope] | None = [] if mode is DeliveryMode.EXACTLY_ONCE else None
        telemetry = core.telemetry
        span = None
        t0 = latency = -1.0
        if telemetry is not None:
            if samples is None:
                span = telemetry.on_handle(queue, msg, d.attempts, d.enqueued_at)
            else:
                core.sample_tick += 1
                if core.sample_tick >= core.config.metrics_sample_every:
                    core.sample_tick = 0
                    latency = core.clock.now() - d.enqueued_at
                    t0 = perf_counter()
        token = current.set(Current(core, msg, d.options, outbox))
        try:
            if span is not None:
                span.__enter__()
            result = handler(msg)
            if type(result) is CoroutineType or (
                result is not None and inspect.isawaitable(result)
            ):
                result = await result
            if result is not None and msg.reply_to and msg.message_type in REQUEST_TYPES:
                await self._respond(msg, result, sender_id=queue)
        except asyncio.CancelledError:
            if span is not None:
                span.__exit__(None, None, None)
            raise
        except Exception as exc:
            if span is not None:
                span.__exit__(type(exc), exc, exc.__traceback__)
            elif samples is not None and telemetry is not None:
                telemetry.count_error(queue, msg.message_type._value_)
            current.reset(token)
            await self._raised(d, msg, exc)
            return False
        if span is not None:
            span.__exit__(None, None, None)
        elif t0 >= 0.0 and samples is not None:
            samples.append((msg.message_type._value_, latency, perf_counter() - t0))
        current.reset(token)
        if mode is DeliveryMode.AT_LEAST_ONCE:
            return True
        if outbox is not None:
            await self._ack_exactly_once(d, msg, outbox, samples)
        elif samples is not None and telemetry is not None:  # at most once: acked when admitted
            telemetry.record_batch(queue, {msg.message_type._value_: 1}, [])
        return False

    async def _may_receive(self, d: Delivery, msg: Message) -> bool:
        """Access control on each message: permissions tightened while a subscription runs
        apply from the next message (dead-lettered ``permission_denied``)."""
        security = self._core.security
        assert security is not None
        try:
            security.authorize_subscribe(self._sub.agent_id, msg.message_type)
        except MessagingError as exc:
            await self._admission.dead_letter(self._sub.agent_id, d, msg, "permission_denied", exc)
            return False
        return True

    async def _raised(self, d: Delivery, msg: Message, exc: Exception) -> None:
        """A handler raised: nack (or dead-letter); an at-most-once message is gone."""
        queue = self._sub.agent_id
        if d.options.delivery_mode is DeliveryMode.AT_MOST_ONCE:
            log.warning(
                "at-most-once message %s failed in %s: %s",
                msg.message_id,
                queue,
                _error_text(exc),
            )
            return
        await self._admission.failed(queue, d, msg, exc)

    async def _ack_exactly_once(
        self, d: Delivery, msg: Message, outbox: list[Envelope], samples: Samples | None
    ) -> None:
        """Ack with the processed key and the handler's outbox, in one transaction."""
        core = self._core
        queue = self._sub.agent_id
        ok = await core.engine.ack(
            queue,
            [d],
            processed_key=processed_key(queue, msg, d.options),
            processed_ttl=core.config.processed_ttl_seconds,
            outbox=outbox,
        )
        telemetry = core.telemetry
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


@dataclass(eq=False, repr=False)
class Subscriptions:
    """The bus's subscriptions, one per agent."""

    _core: Core
    _admission: Admission
    _publisher: Publisher
    _respond: Respond
    subs: dict[str, Subscription] = field(default_factory=dict, init=False)

    def consumers(self) -> Iterable[Consumer]:
        """The consumers of the running subscriptions."""
        return [s.consumer for s in self.subs.values() if s.consumer is not None]

    async def subscribe(
        self,
        agent_id: str,
        message_types: Iterable[MessageType | str] | None,
        handler: Handler | None,
        max_concurrency: int,
    ) -> Subscription:
        """:meth:`MessageBus.subscribe`."""
        self._core.check()
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
        await self._admit_types(agent_id, types)
        # ready when subscribe() returns: what consuming needs is set up before the loop runs
        await self._core.engine.prepare(agent_id)
        sub = self.subs.get(agent_id)
        if sub is None:
            sub = Subscription(agent_id, {}, max_concurrency)
            self.subs[agent_id] = sub
        sub.max_concurrency = max(sub.max_concurrency, max_concurrency)
        for t in types:
            sub.handlers[t] = handler
        self._start(sub)
        return sub

    async def _admit_types(self, agent_id: str, types: list[MessageType | None]) -> None:
        """Check the agent may receive the types; bind it to the broadcast ones."""
        security = self._core.security
        assert security is not None
        if security.acl_active:
            for t in types:
                for mt in MessageType if t is None else [t]:
                    security.authorize_subscribe(agent_id, mt)
        for t in types:
            for mt in BROADCAST_TYPES if t is None else [t]:
                if mt in BROADCAST_TYPES:
                    await self._publisher.bind(mt.value, agent_id)

    def _start(self, sub: Subscription) -> None:
        """Start the subscription's consumer (again, when its task ended)."""
        consumer = sub.consumer
        if consumer is None:
            handle = Dispatch(self._core, self._admission, self._respond, sub).handle
            consumer = Consumer(
                self._core,
                self._admission,
                sub.agent_id,
                handle,
                batch=self._core.config.prefetch,
                report=True,
            )
            sub.consumer = consumer
        consumer.concurrency = sub.max_concurrency
        consumer.start(f"aos-consumer:{sub.agent_id}")

    async def unsubscribe(self, agent_id: str, *, unbind: bool) -> None:
        """:meth:`MessageBus.unsubscribe`."""
        sub = self.subs.pop(agent_id, None)
        if sub is not None and sub.consumer is not None:
            sub.consumer.close()
            await sub.consumer.stopped()
        if unbind and self._core.started:
            for mt in BROADCAST_TYPES:
                await self._publisher.unbind(mt.value, agent_id)
