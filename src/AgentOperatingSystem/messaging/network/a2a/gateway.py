"""How A2A calls reach agents on the bus and how their answers come back.

Each turn of a task is a QUERY to the agent (sender ``a2a:<contextId>``) whose ``reply_to``
is one durable queue, :data:`ANSWERS`, with the turn's correlation id
``<taskId>:<turn>``. The node consumes that queue: every answer, on time or late (after the
A2A call stopped waiting), is handed to ``on_answer``, which folds it into its task. So an
answer never lands in a queue that nobody reads, and one that arrives after a restart (or on
another node sharing the store) still completes its task.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from ...core.bus import MessageBus
from ...types import Message, MessageType

__all__ = ["ANSWERS", "Gateway", "turn_of"]

#: The queue every A2A answer goes to.
ANSWERS = "aos.a2a.answers"

OnAnswer = Callable[[str, Message], Awaitable[None]]
"""``on_answer(task_id, answer)``: fold an answer (RESPONSE, or the ERROR of a request its
agent dead-lettered) into the task ``task_id``."""


def turn_of(correlation_id: str | None) -> str | None:
    """The task id of an answer's correlation id ``<taskId>:<turn>`` (None if not one)."""
    if not correlation_id or ":" not in correlation_id:
        return None
    task_id, _, turn = correlation_id.rpartition(":")
    return task_id if task_id and turn.isdigit() else None


class Gateway:
    """Sends the turns of A2A tasks to agents on ``bus`` and consumes their answers."""

    def __init__(self, bus: MessageBus, on_answer: OnAnswer) -> None:
        self.bus = bus
        self.on_answer = on_answer
        self._started = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Consume :data:`ANSWERS` (once the bus runs; idempotent)."""
        if self._started:
            return
        async with self._lock:
            if self._started or not self.bus.started:
                return
            answers = [MessageType.RESPONSE, MessageType.ERROR]
            await self.bus.subscribe(ANSWERS, answers, self._take, max_concurrency=8)
            self._started = True

    async def stop(self) -> None:
        """Stop consuming (answers that come meanwhile wait in the queue)."""
        if self._started:
            self._started = False
            if self.bus.started:
                await self.bus.unsubscribe(ANSWERS, unbind=False)

    async def ask(
        self, agent_id: str, context_id: str, task_id: str, turn: int, content: dict[str, Any]
    ) -> None:
        """Send turn number ``turn`` of task ``task_id`` to ``agent_id`` (its answer comes
        to whichever node consumes :data:`ANSWERS`; this one since :meth:`start`)."""
        await self.bus.publish(
            Message(
                message_type=MessageType.QUERY,
                sender_id=f"a2a:{context_id}",
                recipient_id=agent_id,
                content=content,
                correlation_id=f"{task_id}:{turn}",
                reply_to=ANSWERS,
            )
        )

    async def _take(self, msg: Message) -> None:
        task_id = turn_of(msg.correlation_id)
        if task_id is not None:
            await self.on_answer(task_id, msg)
