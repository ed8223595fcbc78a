"""Admission and failure: what the consume loop and the pull side do with a delivery before
and after a handler.

:meth:`Admission.admit` decodes a delivery and checks it (TTL, attempts, hop limit,
signature, exactly-once key); what must not reach a handler is dead-lettered with a reason
(``undecodable``, ``undecryptable``, ``expired``, ``max_attempts``, ``hop_limit``,
``signature``). :meth:`Admission.failed` applies the retry policy to a handler that raised.
A request that is dead-lettered gets an ERROR answer (``aos_failed``) so its requester does
not wait for its timeout.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from ..brokers.base import Delivery
from ..codec.envelope import decode_cloudevent
from ..errors import DecodeError, DecryptionError, MessagingError
from ..errors import error_text as _error_text
from ..policy import DeliveryOptions
from ..types import REQUEST_TYPES, DeliveryMode, Message, MessageType
from .state import Core

__all__ = ["Admission", "Respond", "processed_key"]

log = logging.getLogger("aos.messaging.bus")

Respond = Callable[..., Awaitable[Any]]
"""``respond(request, content, *, message_type=...)``: answers a request (see requests.py)."""


def processed_key(queue: str, msg: Message, options: DeliveryOptions) -> str:
    """The exactly-once key recorded with the ack of ``msg`` in ``queue``."""
    return f"{queue}\x1f{options.idempotency_key or msg.message_id}"


class Admission:
    """Admits deliveries of one bus, dead-letters what fails, applies the retry policy."""

    def __init__(self, core: Core) -> None:
        self._core = core
        #: Answers a request; set by the bus to its requests' ``respond``.
        self.respond: Respond | None = None
        #: A delivery needs no check at all when it is an in-process message with default
        #: options and no TTL, within this many attempts (-1: signatures are required, so
        #: every delivery is checked): :meth:`admit` would return its message as it is.
        self.plain_attempts = -1 if core.config.require_signatures else core.retry.max_attempts

    def decode(
        self, body: bytes, *, message_id: str | None = None, queue: str | None = None
    ) -> tuple[Message, DeliveryOptions]:
        """Decode an envelope, or a foreign CloudEvent (``DecodeError``/``DecryptionError``
        when it cannot be); a foreign one takes the engine's ``message_id`` and ``queue`` as
        its id and recipient, as :meth:`admit` gives them."""
        core = self._core
        return decode_cloudevent(
            body,
            message_id=message_id,
            recipient=queue,
            max_bytes=core.config.max_message_bytes,
            keys=core.content_keys(),
        )

    async def verified(self, msg: Message) -> bool:
        """False when signatures are required and ``msg``'s does not verify (its sender's
        keys are re-read once: one registered in another process a moment ago)."""
        security = self._core.security
        return (
            security is None
            or not security.require_signatures
            or security.verify(msg)
            or await security.verify_async(msg)
        )

    async def admit(self, queue: str, d: Delivery) -> Message | None:
        """Decode and check a delivery; dead-letter it (returning None) when it must not
        reach a handler. An at-most-once message is acked here (removed on delivery)."""
        core = self._core
        msg = d.message
        if msg is None:
            try:
                # A foreign CloudEvent (no AOS attributes) takes the engine's id and this
                # queue as its recipient.
                msg, d.options = self.decode(d.body or b"", message_id=d.message_id, queue=queue)
            except DecryptionError as exc:
                await self.dead_letter(queue, d, None, "undecryptable", exc)
                return None
            except DecodeError as exc:
                await self.dead_letter(queue, d, None, "undecodable", exc)
                return None
            if msg.message_id != d.message_id:
                wrong = f"envelope id {msg.message_id!r} is not the engine's id {d.message_id!r}"
                await self.dead_letter(queue, d, None, "undecodable", None, error_text=wrong)
                return None
            d.message = msg
        reason, error = self._refusal(d)
        security = core.security
        if (
            reason is None
            and security is not None
            and security.require_signatures
            and not await self.verified(msg)
        ):
            reason, error = "signature", "missing, forged or tampered signature"
        if reason is not None:
            await self.dead_letter(queue, d, msg, reason, None, error_text=error)
            return None
        mode = d.options.delivery_mode
        if mode is DeliveryMode.AT_LEAST_ONCE:
            return msg
        broker = core.engine
        if mode is DeliveryMode.AT_MOST_ONCE:
            await broker.ack(queue, [d])
        elif await broker.is_processed(processed_key(queue, msg, d.options)):
            await broker.ack(queue, [d])  # exactly once: this key was handled already
            return None
        return msg

    def _refusal(self, d: Delivery) -> tuple[str | None, str | None]:
        """Why a decoded delivery must not be handled (reason, error), or (None, None)."""
        if d.expires_at is not None and d.expires_at <= self._core.clock.now():
            return "expired", None
        options = d.options
        policy = options.retry_policy or self._core.retry
        if d.attempts > policy.max_attempts:
            return "max_attempts", d.last_error or "lock expired"
        limit = self._core.config.hop_limit
        if options.hops > limit:
            return "hop_limit", f"{options.hops} hops > hop_limit {limit}"
        return None, None

    async def dead_letter(
        self,
        queue: str,
        d: Delivery,
        msg: Message | None,
        reason: str,
        exc: BaseException | None,
        *,
        error_text: str | None = None,
    ) -> None:
        """Dead-letter a locked delivery with a reason; tell a requester its request failed."""
        core = self._core
        error = error_text if exc is None else _error_text(exc)
        ok = await core.engine.dead_letter(queue, d, reason=reason, error=error)
        telemetry = core.telemetry
        if telemetry is not None:
            mt = msg.message_type.value if msg is not None else "unknown"
            telemetry.on_settle(queue, mt, "expired" if reason == "expired" else "dead_lettered")
        if not ok:
            log.warning("dead-lettering %s in %s failed: lock lost", d.message_id, queue)
            return
        log.info("dead-lettered %s from %s: %s %s", d.message_id, queue, reason, error or "")
        if (
            msg is not None
            and msg.reply_to
            and msg.message_type in REQUEST_TYPES
            and reason not in ("signature", "permission_denied")  # reply_to is not trusted then
            and self.respond is not None
        ):
            try:
                await self.respond(
                    msg,
                    {"aos_failed": True, "reason": reason, "error": error},
                    message_type=MessageType.ERROR,
                )
            except MessagingError:
                log.exception("could not tell the requester of %s it failed", d.message_id)

    async def failed(self, queue: str, d: Delivery, msg: Message, exc: BaseException) -> None:
        """A handler raised (or a pull consumer nacked): release the delivery for a retry
        after the policy's backoff, or dead-letter it after ``max_attempts``."""
        policy = d.options.retry_policy or self._core.retry
        if d.attempts >= policy.max_attempts:
            await self.dead_letter(queue, d, msg, "max_attempts", exc)
            return
        await self.release(queue, d, msg, policy.delay(d.attempts), exc)

    async def release(
        self, queue: str, d: Delivery, msg: Message, delay: float, exc: BaseException
    ) -> None:
        """Release a delivery to be redelivered after ``delay`` seconds (a nack)."""
        await self._core.engine.release(queue, d, delay=delay, error=_error_text(exc))
        telemetry = self._core.telemetry
        if telemetry is not None:
            telemetry.on_settle(queue, msg.message_type.value, "nacked")
