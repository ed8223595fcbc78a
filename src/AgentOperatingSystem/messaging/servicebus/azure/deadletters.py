"""A subscription's dead-letter queue on Azure: read with ``peek_messages`` on the
``deadletter`` sub-queue, purged by draining it in receive-and-delete mode.

Azure has no "resubmit": :meth:`AzureDeadLetters.resubmit` receives the dead letter, sends a
copy to the topic and completes the dead letter. The copy goes through the topic's rules
again, so **every** subscription whose rules match receives it, not only the one it came
from.
"""

from __future__ import annotations

from typing import Any

from ...errors import UnknownMessageError
from ...metadata import DLQ_ERROR, DLQ_REASON
from ...types import Message
from ..entities import SERVICEBUS_KEY, OutgoingMessage
from .connection import AzureConnection
from .convert import from_received, str_or_none, to_service_bus_message
from .sdk import ServiceBusReceiveMode, ServiceBusSubQueue
from .translate import azure_errors

__all__ = ["AzureDeadLetters"]


class AzureDeadLetters:
    """The :class:`~..backend.DeadLetterStore` of :class:`~.service.AzureServiceBus`.

    ``wait_seconds`` bounds each receive while resubmitting or purging.
    """

    def __init__(self, connection: AzureConnection, wait_seconds: float) -> None:
        self._conn = connection
        self.wait_seconds = wait_seconds

    async def dead_letters(
        self, topic_name: str, subscription_name: str, max_count: int
    ) -> list[Message]:
        """``peek_messages`` on the ``deadletter`` sub-queue, from its first message."""
        self._conn.check()
        receiver = self._conn.receiver(topic_name, subscription_name, dead_letter=True)
        async with self._conn.lock(topic_name, subscription_name, True):
            with azure_errors(f"read the dead letters of {topic_name}/{subscription_name}"):
                peeked = await receiver.peek_messages(
                    max_message_count=max_count, sequence_number=1
                )
        return [from_received(m, topic_name, subscription_name, dead=True) for m in peeked]

    async def resubmit(self, message: Message) -> None:
        """Receive the dead letter, send a copy to the topic, complete the dead letter."""
        self._conn.check()
        info = message.metadata.get(SERVICEBUS_KEY) if isinstance(message, Message) else None
        if not isinstance(info, dict) or "dead_letter_reason" not in info:
            raise UnknownMessageError("resubmit takes a message read with receive_dead_letters()")
        topic, sub = str(info.get("topic")), str(info.get("subscription"))
        wanted = str(info.get("delivery_id"))
        receiver = self._conn.receiver(topic, sub, dead_letter=True)
        found: Any = None
        others: list[Any] = []
        async with self._conn.lock(topic, sub, True):
            with azure_errors(f"resubmit a dead letter of {topic}/{sub}"):
                for _ in range(100):
                    batch = await self._conn.receive_once(receiver, 100, self.wait_seconds)
                    if not batch:
                        break
                    for item in batch:
                        if found is None and str_or_none(item.sequence_number) == wanted:
                            found = item
                        else:
                            others.append(item)
                    if found is not None:
                        break
                for item in others:
                    await receiver.abandon_message(item)
                if found is None:
                    raise UnknownMessageError(
                        f"no dead letter {message.message_id!r} in {topic}/{sub}"
                        " (already resubmitted or purged?)"
                    )
                copy = from_received(found, topic, sub, dead=True)
                props = copy.metadata[SERVICEBUS_KEY]["properties"]
                system = {
                    "message_id": copy.message_id,
                    **copy.metadata[SERVICEBUS_KEY]["system"],
                }
                if copy.correlation_id:
                    system["correlation_id"] = copy.correlation_id
                if copy.reply_to:
                    system["reply_to"] = copy.reply_to
                metadata = {
                    k: v for k, v in copy.metadata.items() if k not in (DLQ_REASON, DLQ_ERROR)
                }
                metadata[SERVICEBUS_KEY] = {"properties": props}
                outgoing = OutgoingMessage(copy.copy(metadata=metadata), props, system)
                await self._conn.sender(topic).send_messages(to_service_bus_message(outgoing))
                await receiver.complete_message(found)

    async def purge_dead_letters(self, topic_name: str, subscription_name: str) -> int:
        """Drain the ``deadletter`` sub-queue in receive-and-delete mode."""
        self._conn.check()
        count = 0
        with azure_errors(f"purge the dead letters of {topic_name}/{subscription_name}"):
            receiver = self._conn.client.get_subscription_receiver(
                topic_name=topic_name,
                subscription_name=subscription_name,
                sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE,
            )
            try:
                while True:
                    batch = await self._conn.receive_once(receiver, 100, self.wait_seconds)
                    if not batch:
                        break
                    count += len(batch)
            finally:
                await receiver.close()
        return count
