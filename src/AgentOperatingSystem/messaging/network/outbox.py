"""The network outbox: where a send that failed waits, and how it is sent again.

A failed send is not lost: the message goes straight to the dead-letter queue of the
sender's *network outbox* on the local bus, ``_net.outbox.<sender_id>`` (see
:func:`outbox_queue`), with the reason (``unreachable``, ``circuit_open``, ``rejected``) and
the error (one ``Broker.put_dead_letter``: it is never deliverable there). Read them with
:meth:`Outbox.failed` (``NetworkProtocol.get_failed_messages``, or
``bus.get_dead_letter_messages(queue)``); :meth:`Outbox.resubmit` sends them again, and so
does the outbox pump for anything put back with ``bus.resubmit(message)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Awaitable, Protocol

from ...config.network import NetworkConfig
from ..brokers.base import Delivery, Envelope, Settlement
from ..codec.envelope import decode, encode
from ..core.bus import MessageBus
from ..errors import (
    BrokerClosedError,
    DuplicateMessageError,
    MessagingError,
    UnknownAgentError,
    error_text,
)
from ..policy import DeliveryOptions
from ..types import Message
from .sending import ResubmitReport, SendReceipt, failure_reason
from .wire import log

__all__ = ["OUTBOX_PREFIX", "Outbox", "outbox_queue"]

OUTBOX_PREFIX = "_net.outbox."


def outbox_queue(sender_id: str) -> str:
    """The local queue whose dead letters are ``sender_id``'s failed network sends."""
    return OUTBOX_PREFIX + sender_id


class Route(Protocol):
    """Send a message wherever its recipient is (``NetworkProtocol._route``)."""

    def __call__(
        self,
        message: Message,
        options: DeliveryOptions,
        address: str | None = None,
        *,
        report_failure: bool = True,
    ) -> Awaitable[SendReceipt]:
        """The receipt; raises a :class:`MessagingError` when the send fails."""
        ...


class Outbox:
    """The failed sends of a node's agents, in dead-letter queues of its local ``bus``, and
    the pump that sends again what was put back. ``route`` sends a message again."""

    def __init__(self, bus: MessageBus, config: NetworkConfig, route: Route) -> None:
        self._bus = bus
        self._config = config
        self._route = route
        self._locks: dict[str, asyncio.Lock] = {}
        self._pump_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    # -- failed sends --------------------------------------------------------------------

    async def on_send_failure(
        self, message: Message, options: DeliveryOptions, reason: str, exc: BaseException
    ) -> None:
        """The pool's failure hook: dead-letter ``message`` with ``reason`` and the error."""
        await self.put(message, options, reason, error_text(exc))

    async def put(
        self, message: Message, options: DeliveryOptions, reason: str, error: str
    ) -> None:
        """Put a message that could not be delivered straight into the dead-letter queue of
        its sender's outbox. One already there is logged, not raised."""
        queue = outbox_queue(message.sender_id)
        ttl = message.ttl
        envelope = Envelope(
            queue,
            message.message_id,
            message.priority.value,
            body=encode(message, options),
            expires_at=message.timestamp.timestamp() + ttl if ttl is not None else None,
        )
        try:
            # one attempt: the send (its retries are the pool's, inside that one attempt)
            stored = await self._bus.broker.put_dead_letter(
                envelope, reason=reason, error=error, attempts=1
            )
        except DuplicateMessageError:
            stored = False
        if not stored:
            log.info("message %s is already in %s", message.message_id, queue)
            return
        log.info(
            "send of %s to %r failed (%s); dead-lettered in %s",
            message.message_id,
            message.recipient_id,
            reason,
            queue,
        )

    async def failed(self, sender_id: str, limit: int = 100) -> list[Message]:
        """``sender_id``'s messages that could not be delivered, oldest first; each one's
        metadata says why (``aos.dead_letter.reason``/``.error``)."""
        return await self._bus.get_dead_letter_messages(outbox_queue(sender_id), limit)

    async def resubmit(self, sender_id: str | None = None) -> ResubmitReport:
        """Send ``sender_id``'s failed messages (everyone's when None) again, now. Those that
        fail again go back to the dead-letter queue."""
        broker = self._bus.broker
        if sender_id is not None:
            queues = [outbox_queue(sender_id)]
        else:
            queues = [q for q in await broker.queues() if q.startswith(OUTBOX_PREFIX)]
        report = ResubmitReport()
        for queue in queues:
            # one hold of the lock: the pump cannot take what this call put back
            async with self._lock(queue):
                count = await broker.dead_letter_depth(queue)
                if count:
                    for dl in await broker.dead_letters(queue, count):
                        try:
                            await broker.resubmit(queue, dl.message_id)
                        except DuplicateMessageError:
                            continue
                await self._drain_locked(queue, report)
        return report

    def _lock(self, queue: str) -> asyncio.Lock:
        lock = self._locks.get(queue)
        if lock is None:
            lock = self._locks[queue] = asyncio.Lock()
        return lock

    async def _drain(self, queue: str) -> ResubmitReport:
        """Send every live message of an outbox queue; dead-letter those that fail."""
        async with self._lock(queue):
            return await self._drain_locked(queue, ResubmitReport())

    async def _drain_locked(self, queue: str, report: ResubmitReport) -> ResubmitReport:
        """:meth:`_drain`, the queue's lock held by the caller; what happened to each
        message is added to ``report``."""
        broker = self._bus.broker
        lock_seconds = self._bus.config.lock_seconds
        while batch := await broker.receive(queue, 16, lock_seconds):
            for d in batch:
                reason = await self._resend(queue, d)
                if reason is None:
                    report.delivered.append(d.message_id)
                else:
                    report.failed.append(d.message_id)
                    report.reasons[d.message_id] = reason
        return report

    async def _resend(self, queue: str, d: Delivery) -> str | None:
        """Send one message of an outbox queue again: None (acked) when it was delivered,
        else the reason it went back to the dead-letter queue (expired, undecodable, the
        send's failure)."""
        bus = self._bus
        broker = bus.broker
        settle = Settlement(d.message_id, d.token)
        if d.expires_at is not None and d.expires_at <= bus.clock.now():
            await broker.dead_letter(queue, settle, reason="expired")
            return "expired"
        try:
            if d.message is not None:
                msg, options = d.message, d.options
            else:
                limit = max(self._config.server.max_body_bytes, bus.config.max_message_bytes)
                msg, options = decode(d.body or b"", max_bytes=limit)
        except MessagingError as exc:
            await broker.dead_letter(queue, settle, reason="undecodable", error=error_text(exc))
            return "undecodable"
        try:
            await self._route(msg, options, report_failure=False)
        except MessagingError as exc:
            reason = "unknown_agent" if isinstance(exc, UnknownAgentError) else failure_reason(exc)
            await broker.dead_letter(queue, settle, reason=reason, error=error_text(exc))
            return reason
        await broker.ack(queue, [settle])
        return None

    # -- the pump ------------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Start the pump (a task named ``name``) that sends what was put back."""
        if self._pump_task is None:
            self._wake = asyncio.Event()
            self._pump_task = asyncio.create_task(self._pump(self._wake), name=name)

    async def stop(self) -> None:
        """Stop the pump (cancelled and awaited)."""
        task, self._pump_task = self._pump_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def wake(self) -> None:
        """Ask the pump to look for resubmitted messages now."""
        if self._wake is not None:
            self._wake.set()

    async def _pump(self, wake: asyncio.Event) -> None:
        """Deliver what was put back into outbox queues (``bus.resubmit``)."""
        interval = self._config.outbox.poll_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=interval)
            wake.clear()
            try:
                broker = self._bus.broker
                for queue in await broker.queues():
                    if queue.startswith(OUTBOX_PREFIX) and await broker.depth(queue) > 0:
                        await self._drain(queue)
            except BrokerClosedError:
                continue
            except Exception:
                log.exception("the network outbox pump failed; retrying")
