"""The engine backend's facade: :class:`EngineServiceBus` owns the engine, a catalog of
entities, an admin and a dead-letter store, and runs the message paths itself (send with rule
routing and the topic's size limit, peek-lock receive, settlement)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ...brokers import open_broker
from ...brokers.base import Broker, Delivery, Envelope, Settlement
from ...clock import SYSTEM_CLOCK, Clock
from ...codec.envelope import decode, encode
from ...errors import (
    BrokerClosedError,
    ConfigurationError,
    DecodeError,
    DuplicateMessageError,
    EntityNotFoundError,
    FilterEvaluationError,
    LockLostError,
    MessagingError,
    ServiceBusError,
    TopicFullError,
    UnknownMessageError,
)
from ...types import Message, new_message_id
from ..delegation import DelegatingBackend, Forwarded
from ..entities import (
    MIB,
    REASON_EXPIRED,
    REASON_MAX_DELIVERY,
    REASON_UNDECODABLE,
    SERVICEBUS_KEY,
    OutgoingMessage,
    promoted_properties,
    subscription_queue,
)
from .admin import EngineAdmin
from .catalog import EntityCatalog, SubscriptionState
from .deadletters import EngineDeadLetters
from .ledger import SizeLedger

__all__ = ["EngineServiceBus"]

log = logging.getLogger("aos.messaging.servicebus")


@dataclass(slots=True)
class _Held:
    topic: str
    subscription: str
    token: str
    size: int


def _min_ttl(*values: float | None) -> float | None:
    given = [v for v in values if v is not None]
    return min(given) if given else None


class EngineServiceBus(DelegatingBackend):
    """Service Bus semantics on a broker-seam engine (memory, SQLite, NATS).

    ``broker`` may be injected (e.g. to share a :class:`~...core.bus.MessageBus`'s engine);
    it is then not closed by :meth:`close`. ``clock`` drives lock, TTL and scheduling times.
    Topics, subscriptions and rules are kept by an :class:`~.admin.EngineAdmin`, dead letters
    read by an :class:`~.deadletters.EngineDeadLetters` (both reached through
    :class:`~..delegation.DelegatingBackend`).
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
        self._ledger = SizeLedger()
        self._held: dict[tuple[str, str], _Held] = {}
        self._closing = asyncio.Event()
        self._closed = False

        def engine() -> Broker:
            return self.broker

        catalog = EntityCatalog(engine, self.clock, self._ledger, metadata_refresh_seconds)
        self._catalog = catalog
        self._topic_state = catalog.state
        self._sub_state = catalog.subscription
        self._admin = EngineAdmin(catalog, engine, self._ledger, self._forget_queue)
        self._dlq = EngineDeadLetters(catalog, engine, self._ledger)

    # -------------------------------------------------------------- lifecycle

    @property
    def broker(self) -> Broker:
        """The engine (after :meth:`start`)."""
        if self._broker is None or self._closed:
            raise BrokerClosedError("the service bus is not started or already closed")
        return self._broker

    metadata_refresh_seconds = Forwarded[float](
        "_catalog",
        "metadata_refresh_seconds",
        "How long topic metadata is cached before it is read again.",
    )

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

    def _forget_queue(self, queue: str) -> None:
        for key in [k for k in self._held if k[0] == queue]:
            del self._held[key]

    # -------------------------------------------------------------- sending

    async def send(self, topic_name: str, outgoing: OutgoingMessage) -> None:
        """Evaluate each subscription's rules and enqueue one copy per matching one."""
        body = encode(outgoing.message)
        size = len(body)
        self._ledger.observe(size)  # the first estimate of messages already there
        state = await self._topic_state(topic_name)
        props = outgoing.properties
        system = outgoing.system
        matched: list[SubscriptionState] = []
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
        limit = int(topic.max_size_in_mb * MIB)
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

    async def _expire(self, sub: SubscriptionState, d: Delivery, size: int) -> None:
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

    async def _admit(self, sub: SubscriptionState, d: Delivery) -> Message | None:
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
        info["properties"] = {
            **promoted_properties(msg.content),
            **dict(info.get("properties") or {}),
        }
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
