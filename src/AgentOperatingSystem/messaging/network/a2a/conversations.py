"""A task's turns in the conversations of the
:class:`~AgentOperatingSystem.messaging.conversation_system.ConversationSystem`: an A2A
``contextId`` is a conversation id. The first task of a context starts the conversation
(participants: the client, ``a2a:<contextId>``, and the agent; topic
``a2a``); each user message and each answer of the agent (its reply, or its question when it
needs input) is added as a turn, so ``get_conversation_history(contextId)`` shows the
exchange, and the agent's handler can read it (``get_context``) while it answers.

The node is given the conversation system (``NetworkProtocol(..., conversations=
ConversationSystem(storage))``; the network does not import it, a sibling service); without
one, nothing is recorded. Recording a turn never fails the A2A call: a context that names a
conversation the client is no participant of, or one that has ended, is logged and not
written to.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from ...errors import MessagingError
from ...types import MessageType
from ..wire import log
from .tasks import A2AMessage, A2ATask

__all__ = ["TOPIC", "ConversationLog", "TaskConversations", "client_id"]

#: The topic of the conversations A2A clients start.
TOPIC = "a2a"


class ConversationLog(Protocol):
    """What the A2A side uses of a
    :class:`~AgentOperatingSystem.messaging.conversation_system.ConversationSystem`."""

    async def get_conversation(self, conversation_id: str) -> dict[str, Any]:
        """The conversation's record (a MessagingError when there is none)."""
        ...

    async def start_conversation(
        self,
        participants: Sequence[str],
        topic: str,
        metadata: Mapping[str, Any] | None = None,
        conversation_id: str | None = None,
    ) -> str:
        """Start a conversation."""
        ...

    async def add_message(
        self,
        conversation_id: str,
        sender_id: str,
        content: str | Mapping[str, Any],
        message_type: MessageType | str = MessageType.QUERY,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Add a turn."""
        ...


def client_id(context_id: str) -> str:
    """The participant id of the A2A client of a context (the QUERY's sender)."""
    return f"a2a:{context_id}"


def _content(message: A2AMessage) -> dict[str, Any]:
    texts = [p["text"] for p in message.parts if p["kind"] == "text"]
    return {"text": "\n".join(texts), "parts": message.parts}


class TaskConversations:
    """Writes tasks' turns to the conversations of their contexts (nothing when
    ``conversations`` is None)."""

    def __init__(self, conversations: ConversationLog | None) -> None:
        self.conversations = conversations

    async def user_turn(self, task: A2ATask, message: A2AMessage) -> None:
        """The client's ``message`` to ``task`` (the conversation is started if new)."""
        ctx, log_ = task.context_id, self.conversations
        if log_ is None:
            return
        try:
            try:
                await log_.get_conversation(ctx)
            except MessagingError:
                await log_.start_conversation(
                    [client_id(ctx), task.agent_id],
                    TOPIC,
                    {"a2a_agent": task.agent_id},
                    conversation_id=ctx,
                )
            await self._add(task, client_id(ctx), message, MessageType.QUERY)
        except MessagingError as exc:
            log.info("A2A context %s: the turn is not recorded (%s)", ctx, exc)

    async def agent_turn(self, task: A2ATask, message: A2AMessage) -> None:
        """The agent's answer (or question) ``message`` in ``task``."""
        if self.conversations is None:
            return
        try:
            await self._add(task, task.agent_id, message, MessageType.RESPONSE)
        except MessagingError as exc:
            log.info("A2A context %s: the answer is not recorded (%s)", task.context_id, exc)

    async def _add(
        self, task: A2ATask, sender: str, message: A2AMessage, kind: MessageType
    ) -> None:
        assert self.conversations is not None
        await self.conversations.add_message(
            task.context_id,
            sender,
            _content(message),
            kind,
            metadata={"a2a_task_id": task.id, "a2a_message_id": message.message_id},
        )
