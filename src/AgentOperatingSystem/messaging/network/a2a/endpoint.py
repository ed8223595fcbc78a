"""The A2A side of a node: the agent-card and JSON-RPC routes, and the task table.

An A2A message becomes a QUERY to the agent on the bus (sender ``a2a:<contextId>``, content
``{"text", "parts", "data", "a2a"}``); the handler's return value becomes the task's artifact
and the agent's reply message. ``SendMessage`` waits for the answer unless the client asks
to return at once; ``GetTask`` reads a remembered task; ``CancelTask`` cancels a running one.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import uuid
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from ....config.network import NetworkConfig
from ...core.bus import MessageBus
from ...errors import RequestFailedError, RequestTimeoutError, error_text
from ..registry import AgentInfo
from ..wire import BodyTooLarge, dumps, error_response, log, read_body
from .card import agent_card
from .parts import parse_part, reply_parts
from .rpc import METHODS, RpcError, invalid_params, optional_id, rpc_error, rpc_result
from .sse import stream_task
from .tasks import A2AMessage, A2ATask

__all__ = ["A2AEndpoint", "Hosted"]

Hosted = Callable[[str], Awaitable[AgentInfo | None]]
"""``hosted(agent_id)``: the agent's entry when this node hosts it, else None."""


class A2AEndpoint:
    """Agent cards, JSON-RPC and the task table of the agents ``hosted`` on a node whose
    local bus is ``bus``."""

    def __init__(self, config: NetworkConfig, bus: MessageBus, hosted: Hosted) -> None:
        self.config = config
        self.bus = bus
        self.hosted = hosted
        self.tasks: OrderedDict[str, A2ATask] = OrderedDict()
        self.runners: set[asyncio.Task[None]] = set()

    # -- routes --------------------------------------------------------------------------

    async def on_card(self, request: web.Request) -> web.StreamResponse:
        """``GET /agents/{agent_id}/.well-known/agent-card.json`` (public)."""
        try:
            agent_id = request.match_info["agent_id"]
            info = await self.hosted(agent_id)
            if info is None:
                return error_response(
                    404, "unknown_agent", f"this node does not host agent {agent_id!r}"
                )
            base = self.config.server.public_url or f"{request.scheme}://{request.host}"
            bearer = self.config.a2a.auth_token is not None
            return web.json_response(agent_card(info, base, bearer=bearer))
        except Exception as exc:
            log.exception("agent card failed")
            return error_response(500, "internal_error", error_text(exc))

    async def on_rpc(self, request: web.Request) -> web.StreamResponse:
        """``POST /agents/{agent_id}``: one JSON-RPC request (bearer token when set)."""
        try:
            token = self.config.a2a.auth_token
            if token is not None:
                given = request.headers.get("Authorization", "")
                expected = f"Bearer {token}"
                if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
                    return error_response(
                        401,
                        "unauthorized",
                        "a bearer token is required",
                        **{"WWW-Authenticate": "Bearer"},
                    )
            agent_id = request.match_info["agent_id"]
            if await self.hosted(agent_id) is None:
                return error_response(
                    404, "unknown_agent", f"this node does not host agent {agent_id!r}"
                )
            try:
                body = await read_body(request, self.config.server.max_body_bytes)
            except BodyTooLarge as exc:
                return error_response(413, "payload_too_large", str(exc))
            if not self.bus.started:
                return error_response(503, "unavailable", "the node's message bus is not running")
            return await self.handle(request, agent_id, body)
        except Exception as exc:
            log.exception("A2A request failed")
            return web.json_response(
                rpc_error(None, -32603, f"Internal error: {error_text(exc)}"), status=500
            )

    # -- JSON-RPC ------------------------------------------------------------------------

    async def handle(self, request: web.Request, agent_id: str, body: bytes) -> web.StreamResponse:
        """Answer the JSON-RPC request ``body`` to ``agent_id``."""
        try:
            rpc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return web.json_response(rpc_error(None, -32700, "Parse error: invalid JSON"))
        request_id = rpc.get("id") if isinstance(rpc, dict) else None
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int, type(None))):
            request_id = None
        try:
            if (
                not isinstance(rpc, dict)
                or rpc.get("jsonrpc") != "2.0"
                or not isinstance(rpc.get("method"), str)
            ):
                raise RpcError(-32600, "Invalid Request: not a JSON-RPC 2.0 request object")
            method = METHODS.get(rpc["method"])
            if method is None:
                raise RpcError(-32601, f"Method not found: {rpc['method']}", "METHOD_NOT_FOUND")
            params = rpc.get("params", {})
            if not isinstance(params, dict):
                raise invalid_params("params must be an object")
            kind, legacy = method
            if kind == "stream":
                return await self.stream(request, request_id, agent_id, params, legacy)
            if kind == "send":
                result = await self.send(agent_id, params, legacy)
            elif kind == "get":
                result = self.get(agent_id, params, legacy)
            else:
                result = await self.cancel(agent_id, params, legacy)
        except RpcError as exc:
            return web.json_response(rpc_error(request_id, exc.code, exc.message, exc.reason))
        return web.Response(
            body=dumps(rpc_result(request_id, result)), content_type="application/json"
        )

    def _task(self, agent_id: str, params: Mapping[str, Any]) -> A2ATask:
        task_id = params.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise invalid_params("id (the task id) is required")
        task = self.tasks.get(task_id)
        if task is None or task.agent_id != agent_id:
            raise RpcError(-32001, f"Task not found: {task_id}", "TASK_NOT_FOUND")
        return task

    def get(self, agent_id: str, params: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
        """``GetTask``: the task, with the last ``historyLength`` messages."""
        task = self._task(agent_id, params)
        length = params.get("historyLength")
        if length is not None and (
            isinstance(length, bool) or not isinstance(length, int) or length < 0
        ):
            raise invalid_params("historyLength must be a non-negative integer")
        return task.render(legacy, length)

    async def cancel(
        self, agent_id: str, params: Mapping[str, Any], legacy: bool
    ) -> dict[str, Any]:
        """``CancelTask``: cancel a task that is not finished."""
        task = self._task(agent_id, params)
        if task.terminal:
            raise RpcError(
                -32002,
                f"Task cannot be canceled: it is already {task.state}",
                "TASK_NOT_CANCELABLE",
            )
        runner = task.runner
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait([runner])
        if not task.terminal:
            task.finish("canceled", "canceled by the client")
        return task.render(legacy)

    async def send(self, agent_id: str, params: Mapping[str, Any], legacy: bool) -> dict[str, Any]:
        """``SendMessage``: a new task; its answer unless asked to return at once."""
        task, content, immediate = self._new_task(agent_id, params)
        runner = self._start(task, content)
        if not immediate:
            await asyncio.wait([runner])
        rendered = task.render(legacy)
        return rendered if legacy else {"task": rendered}

    async def stream(
        self,
        request: web.Request,
        request_id: Any,
        agent_id: str,
        params: Mapping[str, Any],
        legacy: bool,
    ) -> web.StreamResponse:
        """``SendStreamingMessage``: a new task, streamed as server-sent events."""
        task, content, _ = self._new_task(agent_id, params)
        start = functools.partial(self._start, task, content)
        return await stream_task(request, request_id, task, legacy, start)

    # -- tasks ---------------------------------------------------------------------------

    def _new_task(
        self, agent_id: str, params: Mapping[str, Any]
    ) -> tuple[A2ATask, dict[str, Any], bool]:
        """A task for the message in ``params``, the content of its QUERY to the agent, and
        whether the client asked to return at once."""
        msg = params.get("message")
        if not isinstance(msg, dict):
            raise invalid_params("message is required")
        parts = _user_parts(msg)
        if optional_id(msg.get("taskId"), "message.taskId") is not None:
            task_id = msg["taskId"]
            if task_id not in self.tasks:
                raise RpcError(-32001, f"Task not found: {task_id}", "TASK_NOT_FOUND")
            raise RpcError(
                -32004,
                "Unsupported operation: continuing an existing task is not supported;"
                " send a message without taskId",
                "UNSUPPORTED_OPERATION",
            )
        context_id = optional_id(msg.get("contextId"), "message.contextId") or uuid.uuid4().hex
        message_id = optional_id(msg.get("messageId"), "message.messageId") or uuid.uuid4().hex
        metadata = msg.get("metadata") if isinstance(msg.get("metadata"), dict) else None
        config = params.get("configuration") or {}
        if not isinstance(config, dict):
            raise invalid_params("configuration must be an object")
        immediate = bool(config.get("returnImmediately")) or config.get("blocking") is False
        task = A2ATask(uuid.uuid4().hex, context_id, agent_id)
        user = A2AMessage(message_id, "user", parts, context_id, task.id, metadata)
        task.history.append(user)
        content = _query_content(user)
        self._remember(task)
        return task, content, immediate

    def _remember(self, task: A2ATask) -> None:
        self.tasks[task.id] = task
        limit = self.config.a2a.max_tasks
        if len(self.tasks) > limit:
            for tid in [t.id for t in self.tasks.values() if t.terminal]:
                if len(self.tasks) <= limit:
                    break
                del self.tasks[tid]

    def _start(self, task: A2ATask, content: dict[str, Any]) -> asyncio.Task[None]:
        runner = asyncio.create_task(self._run(task, content), name=f"aos-a2a:{task.id}")
        task.runner = runner
        self.runners.add(runner)
        runner.add_done_callback(self.runners.discard)
        return runner

    async def _run(self, task: A2ATask, content: dict[str, Any]) -> None:
        """Ask the agent (a request on the bus) and end the task with its answer."""
        timeout = self.config.a2a.request_timeout
        task.set_state("working")
        try:
            response = await self.bus.request(
                sender_id=f"a2a:{task.context_id}",
                recipient_id=task.agent_id,
                content=content,
                timeout=timeout,
            )
        except asyncio.CancelledError:
            if not task.terminal:
                task.finish("canceled", "canceled")
            raise
        except RequestTimeoutError:
            task.finish("failed", f"the agent did not answer within {timeout:g}s")
            return
        except RequestFailedError as exc:
            task.finish("failed", f"the agent failed: {exc.reason} ({exc.error})")
            return
        except Exception as exc:
            log.exception("A2A task %s for %s failed", task.id, task.agent_id)
            task.finish("failed", f"the request could not be delivered: {exc}")
            return
        task.complete(reply_parts(response.content))

    async def close(self) -> None:
        """Cancel the running tasks and wait for them."""
        runners = list(self.runners)
        for r in runners:
            r.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)


def _user_parts(msg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The parts of a user's message (its role checked)."""
    parts_in = msg.get("parts")
    if not isinstance(parts_in, list) or not parts_in:
        raise invalid_params("message.parts must be a non-empty list")
    parts = [parse_part(p) for p in parts_in]
    role = msg.get("role", "ROLE_USER")
    if role not in ("ROLE_USER", "user", "ROLE_UNSPECIFIED"):
        raise invalid_params("message.role must be the user's")
    return parts


def _query_content(user: A2AMessage) -> dict[str, Any]:
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
            "metadata": user.metadata or {},
        },
    }
    if data:
        content["data"] = data[0]
    return content
