"""Dead letters seen from the bus: list them as Messages, resubmit, purge.

A dead letter is shown as its message with why it is there in its metadata (the
``aos.dead_letter.*`` keys of :mod:`..metadata`); bytes that cannot be decoded are shown as an
ERROR message carrying them in base64.
"""

from __future__ import annotations

import base64

from ..brokers.base import DeadLetter
from ..errors import InvalidMessageError, MessagingError, UnknownMessageError
from ..errors import error_text as _error_text
from ..metadata import DLQ_AT, DLQ_ATTEMPTS, DLQ_ERROR, DLQ_QUEUE, DLQ_REASON
from ..types import Message, MessageType
from .admit import Admission
from .state import Core

__all__ = ["DeadLetters", "dead_letter_message"]

_RAW_LIMIT = 65536


def dead_letter_message(dl: DeadLetter, admission: Admission) -> Message:
    """The dead letter as a Message (a copy) with the dead-letter metadata."""
    msg = dl.message
    if msg is None:
        try:
            msg, _ = admission.decode(dl.body or b"", message_id=dl.message_id, queue=dl.queue)
        except MessagingError as exc:
            raw = dl.body or b""
            msg = Message(
                message_id=dl.message_id,
                message_type=MessageType.ERROR,
                sender_id="unknown",
                recipient_id=dl.queue,
                content={
                    "raw_base64": base64.b64encode(raw[:_RAW_LIMIT]).decode(),
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


class DeadLetters:
    """The dead-letter side of one bus."""

    def __init__(self, core: Core, admission: Admission) -> None:
        self._core = core
        self._admission = admission

    async def list(self, agent_id: str, limit: int) -> list[Message]:
        """:meth:`MessageBus.get_dead_letter_messages`."""
        broker = self._core.check()
        return [
            dead_letter_message(dl, self._admission)
            for dl in await broker.dead_letters(agent_id, limit)
        ]

    async def resubmit(self, message: Message | str, agent_id: str | None) -> None:
        """:meth:`MessageBus.resubmit`."""
        broker = self._core.check()
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
