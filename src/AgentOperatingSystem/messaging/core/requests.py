"""Requests and their answers: correlation futures, the reply listener, late answers.

``request()`` sends a QUERY (by default) with ``reply_to`` set to this bus's reply queue and
waits on a future keyed by its correlation id. An answer comes one of three ways, all taken
by the same futures: in process (a handler of this very bus answers), straight from a
responder on an engine with :class:`~..brokers.base.DirectDelivery` (nothing stored), or
through the reply queue, which a :class:`~.consume.Consumer` reads with the one loop. An
answer that comes after its request gave up is delivered to the requester's own queue.

:meth:`Requests.respond` is the one route of an answer: to a future of this bus, else down
the publish path (which tries the engine's direct delivery first when it has it, and stores
the answer otherwise). An answer sent to a reply queue carries ``config.reply_ttl_seconds``
as its TTL unless it has one: the bound after which the reply queue of a requester that is
gone is collected (:mod:`.collect`). A late answer delivered to the requester's own queue
keeps that TTL (counted again from then): unread for that long, it is dead-lettered there
with reason ``expired``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..brokers.base import Delivery
from ..errors import (
    BrokerClosedError,
    InvalidMessageError,
    MessagingError,
    RequestFailedError,
    RequestTimeoutError,
)
from ..errors import error_text as _error_text
from ..policy import DEFAULT_OPTIONS
from ..types import DeliveryMode, Message, MessagePriority, MessageType
from .admit import Admission
from .consume import Consumer, Samples
from .context import current
from .publish import Publisher, PublishResult
from .state import REPLY_PREFIX, Core

__all__ = ["Requests"]

log = logging.getLogger("aos.messaging.bus")


class _Expired(Exception):
    """Internal: a request's timer fired."""


def _expire(fut: asyncio.Future[Message]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


def _failed(recipient_id: str, response: Message) -> RequestFailedError:
    """The error of a request its responder dead-lettered (the ``aos_failed`` answer)."""
    reason = response.content.get("reason")
    error = response.content.get("error")
    return RequestFailedError(
        f"request to {recipient_id!r} failed: {reason} ({error})", reason=reason, error=error
    )


class Requests:
    """The request/reply side of one bus."""

    def __init__(self, core: Core, admission: Admission, publisher: Publisher) -> None:
        self._core = core
        self._admission = admission
        self._publisher = publisher
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._listening_direct = False
        #: The reply queue's consumer, started with the first request.
        self.listener = Consumer(core, admission, core.reply_queue, self._on_reply)

    async def request(
        self,
        sender_id: str | None,
        recipient_id: str | None,
        content: dict[str, Any] | None,
        timeout: float,
        message_type: MessageType | str,
        priority: MessagePriority | int | str,
        metadata: dict[str, Any] | None,
        publish_options: dict[str, Any],
    ) -> Message:
        """:meth:`MessageBus.request`."""
        core = self._core
        core.check()
        if recipient_id is None:
            raise InvalidMessageError("request() needs recipient_id")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidMessageError("timeout must be a positive number of seconds")
        msg = Message(
            message_type=message_type,  # type: ignore[arg-type]  # coerced by Message
            sender_id=sender_id or core.config.default_sender_id,
            recipient_id=recipient_id,
            content={} if content is None else content,
            priority=priority,  # type: ignore[arg-type]
            metadata={} if metadata is None else metadata,
            reply_to=core.reply_queue,
        )
        correlation = msg.correlation_id = msg.message_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fut: asyncio.Future[Message] = loop.create_future()
        self._pending[correlation] = fut
        listener = self.listener
        if listener.task is None:
            await core.engine.prepare(core.reply_queue)  # the listener ready before asking
            listener.start("aos-replies")
        try:
            if not self._listening_direct:
                await self._listen_direct()
            # Sent at once even inside an exactly-once handler (waiting for the answer while
            # the request sat in the outbox could never finish); handed off to a live
            # consumer where the engine can.
            publisher = self._publisher
            if not publish_options and current.get() is None:
                options, seal = DEFAULT_OPTIONS, None
            else:
                options, seal = publisher.parse_request(publish_options)
            if options is not DEFAULT_OPTIONS or seal is not None or not publisher.put_plain(msg):
                await publisher.send([(msg, options)], seal, 0.0, hand_off=timeout, outbox=False)
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
            raise _failed(recipient_id, response)
        return response

    async def _listen_direct(self) -> None:
        """Take answers handed over directly (engines with DirectDelivery)."""
        direct = self._core.direct
        if direct is not None:
            await direct.listen_direct(self._core.reply_queue, self.take_direct)
        self._listening_direct = True

    async def respond(
        self,
        request: Message,
        result: Any,
        *,
        sender_id: str | None = None,
        message_type: MessageType = MessageType.RESPONSE,
    ) -> PublishResult | None:
        """Answer ``request`` with ``result`` (a Message, a dict of content, or any value as
        ``{"result": value}``); None when it asked for no answer."""
        reply_to = request.reply_to
        if reply_to is None:
            return None
        correlation = request.correlation_id or request.message_id
        if isinstance(result, Message):
            response = result
            if response.correlation_id is None:
                response.correlation_id = correlation
        else:
            response = Message(
                message_type=message_type,
                sender_id=sender_id or request.recipient_id or self._core.config.default_sender_id,
                recipient_id=request.sender_id,
                content=result if isinstance(result, dict) else {"result": result},
                priority=request.priority,
                correlation_id=correlation,
            )
        # A response for a request this very bus is waiting on needs no trip through a queue.
        if reply_to == self._core.reply_queue:
            fut = self._pending.get(response.correlation_id or "")
            if fut is not None and not fut.done():
                fut.set_result(response)
                return PublishResult(response.message_id, (reply_to,))
        if response.ttl is None and reply_to.startswith(REPLY_PREFIX):
            # bounded: unread for that long, it is collected (see .collect)
            response.ttl = self._core.config.reply_ttl_seconds
        publisher = self._publisher
        options = publisher.options(DeliveryMode.AT_LEAST_ONCE)
        results = await publisher.send(
            [(response, options)], None, 0.0, to=reply_to, reply_for=request.message_id
        )
        return results[0]

    async def take_direct(self, body: bytes) -> bool:
        """An answer handed over directly: True when a waiting request took it. False sends
        it the durable way (a late answer, or one that fails the checks, which the reply
        queue's admission then dead-letters with its reason)."""
        try:
            msg, _ = self._admission.decode(body)
        except MessagingError:
            return False
        if not await self._admission.verified(msg):
            return False
        fut = self._pending.get(msg.correlation_id or "")
        if fut is None or fut.done():
            return False
        fut.set_result(msg)
        return True

    async def _on_reply(self, d: Delivery, msg: Message, samples: Samples | None) -> bool:
        """The reply queue's ``handle``: resolve the waiting request, or deliver a late
        answer to its requester's own queue."""
        core = self._core
        fut = self._pending.get(msg.correlation_id or "")
        if fut is not None and not fut.done():
            telemetry = core.telemetry
            if telemetry is not None:
                with telemetry.on_handle(core.reply_queue, msg, d.attempts, d.enqueued_at):
                    fut.set_result(msg)
            else:
                fut.set_result(msg)
        elif msg.recipient_id:
            # Late: the requester gave up. Deliver to its own queue instead of losing it.
            try:
                await self._publisher.send([(msg, d.options)], None, 0.0, to=msg.recipient_id)
            except MessagingError as exc:
                await core.engine.dead_letter(
                    core.reply_queue, d, reason="late_response", error=_error_text(exc)
                )
                return False
        return True

    async def stop(self) -> None:
        """Stop the reply listener and fail the requests still waiting."""
        task = self.listener.task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.listener.task = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BrokerClosedError("the bus stopped before the response came"))
        self._pending.clear()
