"""A subscription's dead-letter queue on our engines: read (without locking), resubmit into
the same subscription, purge. A dead letter that no longer decodes is read as an ERROR
message carrying its raw bytes."""

from __future__ import annotations

import base64
from collections.abc import Callable

from ...brokers.base import Broker, DeadLetter
from ...codec.envelope import decode
from ...errors import MessagingError, UnknownMessageError
from ...metadata import DLQ_ERROR, DLQ_REASON
from ...types import Message, MessageType
from ..entities import SERVICEBUS_KEY, promoted_properties
from .catalog import EntityCatalog, SubscriptionState
from .ledger import SizeLedger

__all__ = ["EngineDeadLetters"]


def _dead_message(sub: SubscriptionState, dl: DeadLetter) -> Message:
    try:
        if dl.message is not None:
            msg = dl.message.copy()
        else:
            msg, _ = decode(dl.body or b"")
    except MessagingError as exc:
        raw = dl.body or b""
        msg = Message(
            message_id=dl.message_id,
            message_type=MessageType.ERROR,
            content={
                "raw_base64": base64.b64encode(raw[:65536]).decode(),
                "raw_size": len(raw),
                "decode_error": str(exc)[:2000],
            },
        )
    info = dict(msg.metadata.get(SERVICEBUS_KEY) or {})
    info["properties"] = {
        **promoted_properties(msg.content),
        **dict(info.get("properties") or {}),
    }
    info.update(
        topic=sub.props.topic_name,
        subscription=sub.props.name,
        lock_token=None,
        delivery_id=dl.message_id,
        delivery_count=dl.attempts,
        enqueued_at=dl.enqueued_at,
        dead_lettered_at=dl.dead_lettered_at,
        dead_letter_reason=dl.reason or None,
        dead_letter_error_description=dl.error,
        size=len(dl.body) if dl.body is not None else 0,
    )
    msg.metadata[SERVICEBUS_KEY] = info
    msg.metadata[DLQ_REASON] = dl.reason or None
    msg.metadata[DLQ_ERROR] = dl.error
    return msg


class EngineDeadLetters:
    """The :class:`~..backend.DeadLetterStore` of :class:`~.service.EngineServiceBus`."""

    def __init__(
        self, catalog: EntityCatalog, broker: Callable[[], Broker], ledger: SizeLedger
    ) -> None:
        self._catalog = catalog
        self._broker = broker
        self._ledger = ledger

    async def dead_letters(
        self, topic_name: str, subscription_name: str, max_count: int
    ) -> list[Message]:
        """Read the subscription's dead letters, oldest first."""
        sub = await self._catalog.subscription(topic_name, subscription_name)
        return [
            _dead_message(sub, dl) for dl in await self._broker().dead_letters(sub.queue, max_count)
        ]

    async def resubmit(self, message: Message) -> None:
        """Move a dead letter back into its subscription (delivery count reset)."""
        info = message.metadata.get(SERVICEBUS_KEY) if isinstance(message, Message) else None
        if not isinstance(info, dict) or "dead_letter_reason" not in info:
            raise UnknownMessageError("resubmit takes a message read with receive_dead_letters()")
        topic, sub_name, delivery_id = (
            info.get("topic"),
            info.get("subscription"),
            info.get("delivery_id"),
        )
        if not (
            isinstance(topic, str) and isinstance(sub_name, str) and isinstance(delivery_id, str)
        ):
            raise UnknownMessageError("resubmit takes a message read with receive_dead_letters()")
        sub = await self._catalog.subscription(topic, sub_name)
        if not await self._broker().resubmit(sub.queue, delivery_id):
            raise UnknownMessageError(
                f"no dead letter {message.message_id!r} in {topic}/{sub_name}"
                " (already resubmitted or purged?)"
            )
        size = info.get("size")
        self._ledger.add(sub.queue, int(size) if isinstance(size, int) else 0)

    async def purge_dead_letters(self, topic_name: str, subscription_name: str) -> int:
        """Delete the subscription's dead letters; return how many."""
        sub = await self._catalog.subscription(topic_name, subscription_name)
        return await self._broker().purge_dead_letters(sub.queue)
