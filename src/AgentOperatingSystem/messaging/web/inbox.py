"""A human-in-the-loop inbox: the A2A tasks parked for input (``input-required``), and an
answer that resumes one (``GET /admin/tasks``, ``POST /admin/tasks/{task_id}/answer``).

The answer goes the way an A2A client's next message would: it is added to the task's
history as the user's turn and sent to the agent as the next QUERY of the task (the agent
finds the task and context ids in ``content["a2a"]``). The node's
:class:`~..network.a2a.desk.TaskDesk` is passed to :func:`~.dashboard.install_dashboard` as
``tasks``; without one the inbox is empty and says it is not available.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from ..network.a2a.desk import TaskDesk
from ..network.a2a.rpc import RpcError
from ..network.a2a.tasks import A2ATask
from .jsonapi import HTTPError, json_body

__all__ = ["TaskInbox"]

_STATES = ("input-required", "auth-required", "submitted", "working")
"""The states ``?state=`` may ask for (default: ``input-required``)."""
_MAX_ANSWER = 100_000


def _text(task: A2ATask) -> str:
    msg = task.status_message
    if msg is None:
        return ""
    return "\n".join(str(p.get("text", "")) for p in msg.parts if p.get("kind") == "text")


def _row(task: A2ATask) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "context_id": task.context_id,
        "agent_id": task.agent_id,
        "owner": task.owner,
        "state": task.state,
        "updated_at": task.timestamp,
        "turns": task.turns,
        "question": _text(task),
    }


class TaskInbox:
    """The inbox routes over one node's task desk (None: no A2A tasks on this node)."""

    def __init__(self, desk: TaskDesk | None) -> None:
        self.desk = desk

    async def _tasks(self, state: str) -> list[A2ATask]:
        desk = self.desk
        assert desk is not None
        out = []
        for rec in await desk.store.records():
            if rec.get("state") != state:
                continue
            live = desk.store.live.get(rec["id"])
            out.append(live if live is not None else A2ATask.from_record(rec))
        out.sort(key=lambda t: t.timestamp)
        return out

    async def tasks(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/tasks[?state=input-required]``: the parked tasks, oldest first,
        with the agent's question."""
        state = request.query.get("state") or "input-required"
        if state not in _STATES:
            raise HTTPError(400, "InvalidParameter", f"state must be one of {list(_STATES)}")
        if self.desk is None:
            return web.json_response({"available": False, "tasks": []})
        rows = [_row(t) for t in await self._tasks(state)]
        return web.json_response({"available": True, "tasks": rows})

    async def answer(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/tasks/{task_id}/answer`` with ``{"text": ...}``: the user's answer
        to a parked task, which resumes it (409 when the task is not waiting for input)."""
        body = await json_body(request)
        text = body.get("text")
        if set(body) - {"text"} or not isinstance(text, str) or not text.strip():
            raise HTTPError(400, "InvalidParameter", 'the body must be {"text": "<answer>"}')
        if len(text) > _MAX_ANSWER:
            raise HTTPError(400, "InvalidParameter", "the answer is too long")
        task_id = request.match_info["task_id"]
        desk = self.desk
        if desk is None:
            raise HTTPError(404, "NotAvailable", "this node has no A2A tasks")
        task = await desk.store.get(task_id)
        if task is None:
            raise HTTPError(404, "UnknownTaskError", f"no task {task_id!r}")
        task = await desk.store.refresh(task)
        if not task.interrupted:
            raise HTTPError(409, "TaskNotWaiting", f"task {task_id} is {task.state}, not waiting")
        params = {
            "message": {
                "messageId": uuid.uuid4().hex,
                "role": "user",
                "taskId": task.id,
                "contextId": task.context_id,
                "parts": [{"kind": "text", "text": text}],
                "metadata": {"answered_from": "aos-dashboard"},
            },
            "configuration": {"returnImmediately": True},
        }
        try:
            turn, _immediate, _length = await desk.turn((task.agent_id, task.owner), params)
        except RpcError as exc:
            raise HTTPError(409, "TaskNotWaiting", str(exc)) from exc
        await desk.start(turn)
        return web.json_response({"task_id": task.id, "state": turn[0].state})
