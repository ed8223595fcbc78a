"""Message builders and draining helpers shared by the tests.

* :func:`task` builds a TASK message with ``content={"n": n}`` (or the content given).
* :func:`drain` takes everything a bus holds for an agent right now, acknowledging it.
* :func:`drain_subscription` does the same for a Service Bus topic subscription.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from AgentOperatingSystem.messaging.types import Message, MessagePriority, MessageType

if TYPE_CHECKING:
    from AgentOperatingSystem.messaging.bus import MessageBus
    from AgentOperatingSystem.messaging.servicebus_manager import ServiceBusManager

__all__ = ["drain", "drain_subscription", "task"]


def task(
    recipient: str | None = "worker",
    n: int = 0,
    *,
    sender: str = "orchestrator",
    priority: MessagePriority = MessagePriority.NORMAL,
    content: dict[str, Any] | None = None,
    **fields: Any,
) -> Message:
    """A TASK from ``sender`` to ``recipient`` (None: routed) with ``{"n": n}`` as content
    unless ``content`` is given; other :class:`Message` fields as keywords."""
    return Message(
        message_type=MessageType.TASK,
        sender_id=sender,
        recipient_id=recipient,
        content={"n": n} if content is None else content,
        priority=priority,
        **fields,
    )


async def drain(bus: MessageBus, agent_id: str, *, ack: bool = True) -> list[Message]:
    """Every message available to ``agent_id`` now, oldest first (acknowledged unless
    ``ack=False``, when they stay locked to this bus)."""
    out: list[Message] = []
    while True:
        batch = await bus.get_messages(agent_id, limit=50)
        if not batch:
            return out
        for message in batch:
            out.append(message)
            if ack:
                await bus.acknowledge(message.message_id, agent_id)


async def drain_subscription(
    sb: ServiceBusManager,
    topic: str,
    subscription: str,
    *,
    complete: bool = True,
    max_wait_time: float = 0,
) -> list[Message]:
    """Every message available in a topic subscription now (completed unless
    ``complete=False``); ``max_wait_time`` is how long each receive may wait for one."""
    out: list[Message] = []
    while True:
        batch = await sb.receive_messages(
            topic, subscription, max_message_count=50, max_wait_time=max_wait_time
        )
        if not batch:
            return out
        for message in batch:
            out.append(message)
            if complete:
                await sb.complete_message(message)
