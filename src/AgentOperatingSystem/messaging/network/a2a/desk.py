"""The task methods of the A2A endpoints: ``SendMessage`` (a new task, or the next turn of
one that is not finished), ``GetTask``, ``CancelTask``, ``ListTasks``, and the answers of
agents folded into their tasks.

A task's turn is a QUERY to the agent (see :mod:`.gateway`). A blocking ``SendMessage``
waits up to ``a2a_request_timeout`` for the task to finish or to wait for input; past it,
the task is answered as it stands (working) and the agent's answer, whenever it comes, is
folded into the task, where ``GetTask`` finds it. A task is seen only by the caller that
created it (the same credentials) and only at its agent's endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any, Mapping

from ....config.network import NetworkConfig
from ...core.turns import input_required
from ...errors import MessagingError
from ...types import Message, MessageType
from ..wire import log
from .conversations import ConversationLog, TaskConversations
from .gateway import Gateway
from .listing import TaskQuery, list_page
from .parts import parse_part, reply_parts
from .push import PushSender, config_of
from .rpc import (
    RpcError,
    content_type_not_supported,
    invalid_params,
    optional_id,
    task_not_found,
    unsupported,
)
from .sse import CLOSE
from .store import TaskStore
from .tasks import A2AMessage, A2ATask

__all__ = ["Caller", "TaskDesk", "Turn"]

#: The most messages one task's history may hold (a client's follow-ups past it are refused).
MAX_HISTORY = 500
#: Seconds between two looks at the store while a blocking call waits (the answer may be
#: folded in by another node that shares the store and the answers queue).
_RECHECK = 1.0

Caller = tuple[str, str]
"""``(agent_id, owner)``: the endpoint called and who called it."""

Turn = tuple[A2ATask, dict[str, Any]]
"""A task and the content of the QUERY of its next turn."""


class TaskDesk:
    """Tasks of the agents on one bus: created, continued, read, listed and canceled."""

    def __init__(
        self,
        config: NetworkConfig,
        store: TaskStore,
        gateway: Gateway,
        push: PushSender,
        conversations: ConversationLog | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.gateway = gateway
        self.push = push
        self.conversations = TaskConversations(conversations)

    async def commit(self, task: A2ATask) -> None:
        """Queue the task's new events for its push configs, and store it."""
        events = task.drain()
        if events:
            try:
                await self.push.updated(task, events)
            except MessagingError as exc:
                log.warning("A2A task %s: push notifications not queued: %s", task.id, exc)
        await self.store.save(task)

    # -- reading ---------------------------------------------------------------------------

    async def task(self, caller: Caller, task_id: Any) -> A2ATask:
        """The caller's task ``task_id`` (-32001 when it has none by that id)."""
        if not isinstance(task_id, str) or not task_id:
            raise invalid_params("id (the task id) is required")
        task = await self.store.get(task_id)
        if task is None or (task.agent_id, task.owner) != caller:
            raise task_not_found(task_id)
        return await self.store.refresh(task)

    async def get(self, caller: Caller, params: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
        """``GetTask``: the task, with the last ``historyLength`` messages."""
        task = await self.task(caller, params.get("id"))
        return task.render(legacy, history_length(params.get("historyLength")))

    async def list(self, caller: Caller, params: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
        """``ListTasks``: a page of the caller's tasks at this agent, newest first."""
        query = TaskQuery.parse(params)
        tasks = []
        for rec in await self.store.records():
            if (rec.get("agent_id"), rec.get("owner", "")) == caller:
                live = self.store.live.get(rec["id"])
                tasks.append(live if live is not None else A2ATask.from_record(rec))
        return list_page(tasks, query, legacy)

    # -- changing --------------------------------------------------------------------------

    async def cancel(
        self, caller: Caller, params: Mapping[str, Any], legacy: bool
    ) -> dict[str, Any]:
        """``CancelTask``: cancel a task that is not finished (-32002 when it is)."""
        task = await self.task(caller, params.get("id"))
        if task.terminal:
            raise RpcError(
                -32002,
                f"Task cannot be canceled: it is already {task.state}",
                "TASK_NOT_CANCELABLE",
                {"taskId": task.id, "state": task.state},
            )
        task.finish("canceled", "canceled by the client")
        await self.commit(task)
        return task.render(legacy)

    async def turn(
        self, caller: Caller, params: Mapping[str, Any]
    ) -> tuple[Turn, bool, int | None]:
        """The task of a ``SendMessage`` (new, or the one its ``taskId`` names) with the
        user's message in its history; whether the client asked to return at once; and the
        ``historyLength`` it wants back."""
        msg = params.get("message")
        if not isinstance(msg, dict):
            raise invalid_params("message is required")
        message_id = optional_id(msg.get("messageId"), "message.messageId")
        if message_id is None:
            raise invalid_params("message.messageId is required")
        parts = user_parts(msg)
        config = params.get("configuration") or {}
        if not isinstance(config, dict):
            raise invalid_params("configuration must be an object")
        check_output_modes(config.get("acceptedOutputModes"))
        immediate = bool(config.get("returnImmediately")) or config.get("blocking") is False
        length = history_length(config.get("historyLength"))
        metadata = msg.get("metadata") if isinstance(msg.get("metadata"), dict) else None
        context_id = optional_id(msg.get("contextId"), "message.contextId")
        task_id = optional_id(msg.get("taskId"), "message.taskId")
        if task_id is not None:
            task = await self.task(caller, task_id)
            if task.terminal:
                raise unsupported(
                    f"a message to task {task.id}, which is {task.state} (a finished task)"
                )
            if context_id is not None and context_id != task.context_id:
                raise invalid_params("message.contextId is not the task's context")
            if len(task.history) >= MAX_HISTORY:
                raise unsupported(f"a message to task {task.id}, whose history is full")
        else:
            agent_id, owner = caller
            task = A2ATask(uuid.uuid4().hex, context_id or uuid.uuid4().hex, agent_id, owner)
        push = config.get("taskPushNotificationConfig", config.get("pushNotificationConfig"))
        if push is not None:
            self.push.check()
            if not isinstance(push, dict):
                raise invalid_params("taskPushNotificationConfig must be an object")
            config_ = config_of(push, task.id)
            task.push = [*(c for c in task.push if c["id"] != config_["id"]), config_]
        user = A2AMessage(message_id, "user", parts, task.context_id, task.id, metadata)
        task.history.append(user)
        task.turns += 1
        if task_id is None:
            await self.store.add(task)
        await self.conversations.user_turn(task, user)
        return (task, query_content(user, task.turns)), immediate, length

    async def start(self, turn: Turn) -> None:
        """Send the turn to the agent; the task is ``working`` meanwhile."""
        task, content = turn
        task.set_state("working")
        await self.commit(task)
        try:
            await self.gateway.ask(task.agent_id, task.context_id, task.id, task.turns, content)
        except Exception as exc:
            log.warning("A2A task %s could not reach %s: %s", task.id, task.agent_id, exc)
            task.finish("failed", f"the request could not be delivered: {exc}")
            await self.commit(task)

    async def wait(self, task: A2ATask) -> A2ATask:
        """Wait (up to ``a2a_request_timeout``) for ``task`` to finish or to wait for its
        client; the task as it stands then."""
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        task.listeners.append(events)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.a2a.request_timeout
        try:
            while not (task.terminal or task.interrupted):
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    event = await asyncio.wait_for(events.get(), min(left, _RECHECK))
                except TimeoutError:
                    # another node sharing the store may have taken the answer
                    await self.store.refresh(task)
                    continue
                if event is CLOSE:
                    break
        finally:
            with contextlib.suppress(ValueError):
                task.listeners.remove(events)
        return await self.store.refresh(task)

    async def answer(self, task_id: str, msg: Message) -> None:
        """Fold an agent's answer into its task (on time or late); a finished task keeps
        its end."""
        if msg.message_type not in (MessageType.RESPONSE, MessageType.ERROR):
            return
        task = await self.store.get(task_id)
        if task is None:
            log.info("A2A answer %s for a task no longer kept (%s)", msg.message_id, task_id)
            return
        task = await self.store.refresh(task)
        if task.terminal:
            log.info("A2A answer %s for task %s, already %s", msg.message_id, task_id, task.state)
            return
        content = msg.content
        if msg.message_type is MessageType.ERROR:
            reason = content.get("reason", "error")
            task.finish("failed", f"the agent failed: {reason} ({content.get('error')})")
        elif input_required(content):
            task.ask(reply_parts({k: v for k, v in content.items() if k != "aos_input_required"}))
        else:
            task.complete(reply_parts(content))
        await self.commit(task)
        if msg.message_type is MessageType.RESPONSE:
            await self.conversations.agent_turn(task, task.history[-1])

    def close(self) -> None:
        """End the streams and waits of every live task (the tasks stay in the store)."""
        for task in self.store.live.values():
            task.emit(CLOSE)


#: The media types of the agents' answers (text, or JSON data), as the cards declare them.
OUTPUT_MODES = ("text/plain", "application/json")


def check_output_modes(accepted: Any) -> None:
    """ContentTypeNotSupportedError (-32005) when the client accepts none of the media types
    an answer can have (``acceptedOutputModes``; absent or empty accepts any)."""
    if accepted is None or accepted == []:
        return
    if not isinstance(accepted, list) or not all(isinstance(m, str) for m in accepted):
        raise invalid_params("acceptedOutputModes must be a list of media types")
    for mode in accepted:
        kind = mode.split(";", 1)[0].strip().lower()
        if kind in ("*/*", "*", "text/*", "application/*") or kind in OUTPUT_MODES:
            return
    raise content_type_not_supported(", ".join(accepted)[:200])


def history_length(value: Any) -> int | None:
    """A ``historyLength`` parameter: None when absent, else a non-negative integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid_params("historyLength must be a non-negative integer")
    return value


def user_parts(msg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The parts of a user's message (its role checked)."""
    parts_in = msg.get("parts")
    if not isinstance(parts_in, list) or not parts_in:
        raise invalid_params("message.parts must be a non-empty list")
    parts = [parse_part(p) for p in parts_in]
    role = msg.get("role")
    if role is None:
        raise invalid_params("message.role is required")
    if role not in ("ROLE_USER", "user"):
        raise invalid_params("message.role must be the user's (ROLE_USER)")
    return parts


def query_content(user: A2AMessage, turn: int) -> dict[str, Any]:
    """The content of the QUERY that asks the agent: ``{"text", "parts", "data", "a2a"}``."""
    parts = user.parts
    texts = [p["text"] for p in parts if p["kind"] == "text"]
    data = [p["data"] for p in parts if p["kind"] == "data"]
    content: dict[str, Any] = {
        "text": "\n".join(texts),
        "parts": parts,
        "a2a": {
            "task_id": user.task_id,
            "context_id": user.context_id,
            "message_id": user.message_id,
            "turn": turn,
            "metadata": user.metadata or {},
        },
    }
    if data:
        content["data"] = data[0]
    return content
