"""What arrives over the network: decoding an envelope, publishing it on the local bus once
(deduplicated on its message id, so a retried or replayed request is delivered once within
the bus's dedup window), and the answer for each message, as ``(status, code, text,
duplicate)`` with status ``202`` when accepted."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ...config.network import NetworkConfig
from ..codec.envelope import decode, decode_event
from ..core.bus import MessageBus
from ..errors import (
    BrokerClosedError,
    DecodeError,
    DecryptionError,
    DuplicateMessageError,
    InvalidMessageError,
    MessageTooLargeError,
    MessagingError,
    PermissionDeniedError,
    QueueFullError,
    error_text,
)
from ..policy import DEFAULT_OPTIONS, DeliveryOptions
from ..types import Message
from .wire import log

__all__ = ["Intake", "Outcome", "Refusal", "batch_result", "publish_options"]

#: ``(status, error code, error text, duplicate)`` of one incoming message.
Outcome = tuple[int, str, str, bool]
_MAX_SEEN = 200_000


class Refusal(Exception):
    """An incoming envelope that is refused before it is published."""

    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.outcome: Outcome = (status, code, text, False)


def publish_options(options: DeliveryOptions, idempotency_key: str | None = None) -> dict[str, Any]:
    """``bus.publish`` keyword options carrying a message's delivery options across a node
    (its hop count, causation id and extras too, so the loop guard counts across nodes)."""
    out: dict[str, Any] = {}
    if options.hops or options.causation_id is not None or options.extras:
        out["delivery_options"] = options
    if options.delivery_mode is not DEFAULT_OPTIONS.delivery_mode:
        out["delivery_mode"] = options.delivery_mode
    key = idempotency_key or options.idempotency_key
    if key is not None:
        out["idempotency_key"] = key
    if options.retry_policy is not None:
        out["retry_policy"] = options.retry_policy
    return out


def batch_result(event: Any, outcome: Outcome) -> dict[str, Any]:
    """One message's entry in a batch answer: ``{"id", "status", "duplicate" | "error"}``."""
    status, code, text, duplicate = outcome
    event_id = event.get("id") if isinstance(event, dict) else None
    result: dict[str, Any] = {
        "id": event_id if isinstance(event_id, str) else None,
        "status": status,
    }
    if status == 202:
        result["duplicate"] = duplicate
    else:
        result["error"] = {"code": code, "message": text}
    return result


class Intake:
    """Decodes incoming envelopes and publishes them on ``bus``, each message once."""

    def __init__(self, bus: MessageBus, config: NetworkConfig) -> None:
        self.bus = bus
        self.config = config
        self._seen: OrderedDict[str, float] = OrderedDict()

    def decode(self, envelope: bytes | Any) -> tuple[Message, DeliveryOptions]:
        """The message of an envelope (bytes, or an event parsed from a batch);
        :class:`Refusal` (400) when it cannot be read here."""
        max_bytes = self.config.server.max_body_bytes
        security = self.bus.security
        keys = security.content_key if security is not None else None
        try:
            if isinstance(envelope, bytes):
                return decode(envelope, max_bytes=max_bytes, keys=keys)
            return decode_event(envelope, max_bytes=max_bytes, keys=keys)
        except DecryptionError as exc:
            raise Refusal(400, "bad_request", f"content cannot be decrypted here: {exc}") from exc
        except DecodeError as exc:
            raise Refusal(
                400, "bad_request", f"not a valid AOS CloudEvents envelope: {exc}"
            ) from exc

    async def publish(
        self, message: Message, options: DeliveryOptions, *, queue: str | None = None
    ) -> Outcome:
        """Publish a message that came over the network, deduplicated on its id (a retry or
        a replay is not delivered twice); what to answer for it. ``queue``: put it on this
        queue instead of its recipient's (a relayed answer for a reply queue)."""
        bus = self.bus
        if not bus.started:
            return 503, "unavailable", "the node's message bus is not running", False
        key = None
        try:
            if options is DEFAULT_OPTIONS and queue is None and not bus.broker.needs_bytes:
                # An in-process engine: deduplicate here (this record is exactly as durable
                # as the queue itself) and let the bus take its fast publish path.
                key = f"{message.recipient_id}\x1f{message.message_id}"
                if not self._first_time(key, bus):
                    return 202, "", "", True
                result = await bus.publish(message)
            else:
                key_or_id = options.idempotency_key or f"net:{message.message_id}"
                extra = publish_options(options, key_or_id)
                if queue is not None:
                    extra["queue"] = queue
                result = await bus.publish(message, **extra)
        except BaseException as exc:
            if key is not None:
                self._seen.pop(key, None)
            if isinstance(exc, MessagingError):
                return _refused(exc, message)
            raise
        return 202, "", "", result.duplicate

    def _first_time(self, key: str, bus: MessageBus) -> bool:
        """Record ``key`` as seen; False when it was seen within the bus's dedup window."""
        seen = self._seen
        now = bus.clock.now()
        while seen:
            oldest, expires = next(iter(seen.items()))
            if expires > now and len(seen) < _MAX_SEEN:
                break
            del seen[oldest]
        if key in seen:
            return False
        seen[key] = now + bus.config.dedup_window_seconds
        return True


def _refused(exc: MessagingError, message: Message) -> Outcome:
    """What to answer for a message the bus refused with ``exc``."""
    if isinstance(exc, DuplicateMessageError):
        return 202, "", "", True
    if isinstance(exc, QueueFullError):
        return 503, "queue_full", str(exc), False
    if isinstance(exc, PermissionDeniedError):
        return 403, "forbidden", str(exc), False
    if isinstance(exc, MessageTooLargeError):
        return 413, "payload_too_large", str(exc), False
    if isinstance(exc, InvalidMessageError):
        return 400, "bad_request", str(exc), False
    if isinstance(exc, BrokerClosedError):
        return 503, "unavailable", str(exc), False
    log.exception("publishing incoming message %s failed", message.message_id)
    return 500, "internal_error", error_text(exc), False
