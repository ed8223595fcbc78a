"""The A2A HTTP+JSON binding: the same operations as JSON-RPC, as resources.

Under each agent's URL ``/agents/{agent_id}`` (the card's ``HTTP+JSON`` interface) and, for
the primary agent, at the origin (``/message:send``, ...):

=========================================  ==============================
``POST   …/message:send``                   SendMessage
``POST   …/message:stream``                 SendStreamingMessage (SSE)
``GET    …/tasks/{id}?historyLength=``      GetTask
``GET    …/tasks?contextId=&status=&…``     ListTasks (the same filters)
``POST   …/tasks/{id}:cancel``              CancelTask
``GET|POST …/tasks/{id}:subscribe``         SubscribeToTask (SSE)
``POST   …/tasks/{id}/pushNotificationConfigs``        create a push config
``GET    …/tasks/{id}/pushNotificationConfigs[/{cid}]`` list / get
``DELETE …/tasks/{id}/pushNotificationConfigs/{cid}``   delete
``GET    …/extendedAgentCard``              GetExtendedAgentCard
=========================================  ==============================

A stream's frames are the bare ``StreamResponse`` objects. An error is an RFC 9457
``application/problem+json`` body (``type``, ``title``, ``status``, ``detail``) whose
extension members carry the A2A error: ``code`` (the JSON-RPC code) and ``error`` (a
``google.rpc.Status`` with its ``ErrorInfo``, which the official SDKs read).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Awaitable, Callable, Protocol

from aiohttp import web

from ....config.network import NetworkConfig
from ..registry import AgentInfo
from ..wire import BodyTooLarge, dumps, log, read_body
from .desk import Caller, TaskDesk
from .push import PushSender, push_method
from .rpc import RpcError, camel_keys, invalid_params
from .sse import stream_task
from .store import TaskStore

__all__ = ["PROBLEM_JSON", "RestBinding", "RestHost", "problem"]

PROBLEM_JSON = "application/problem+json"
#: JSON-RPC code -> (HTTP status, google.rpc code name, title)
_STATUS: dict[int, tuple[int, str, str]] = {
    -32001: (404, "NOT_FOUND", "Task not found"),
    -32002: (409, "FAILED_PRECONDITION", "Task not cancelable"),
    -32003: (400, "UNIMPLEMENTED", "Push notifications not supported"),
    -32004: (400, "UNIMPLEMENTED", "Unsupported operation"),
    -32005: (415, "INVALID_ARGUMENT", "Content type not supported"),
    -32006: (502, "INTERNAL", "Invalid agent response"),
    -32007: (400, "FAILED_PRECONDITION", "Extended agent card not configured"),
    -32009: (400, "FAILED_PRECONDITION", "Version not supported"),
    -32600: (400, "INVALID_ARGUMENT", "Invalid request"),
    -32602: (400, "INVALID_ARGUMENT", "Invalid parameters"),
    -32700: (400, "INVALID_ARGUMENT", "Invalid JSON"),
}
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(exc: RpcError) -> web.Response:
    """The ``application/problem+json`` answer of ``exc``."""
    status, grpc, title = _STATUS.get(exc.code, (500, "INTERNAL", "Internal error"))
    reason = exc.reason or "INTERNAL"
    body = {
        "type": f"https://a2a-protocol.org/errors/{reason.lower().replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": exc.message,
        "code": exc.code,
        "error": {
            "code": status,
            "status": grpc,
            "message": exc.message,
            "details": [
                {
                    "@type": _ERROR_INFO,
                    "reason": reason,
                    "domain": "a2a-protocol.org",
                    "metadata": exc.metadata,
                }
            ],
        },
    }
    return web.Response(status=status, body=dumps(body), content_type=PROBLEM_JSON)


def _query_params(request: web.Request) -> dict[str, Any]:
    """ListTasks / GetTask query parameters, typed as the JSON-RPC params are."""
    out: dict[str, Any] = {}
    for key, value in request.query.items():
        if key in ("pageSize", "historyLength"):
            try:
                out[key] = int(value)
            except ValueError:
                raise invalid_params(f"{key} must be an integer") from None
        elif key == "includeArtifacts":
            out[key] = value.lower() in ("true", "1")
        else:
            out[key] = value
    return out


class RestHost(Protocol):
    """What the binding uses of the A2A endpoint (:class:`.endpoint.A2AEndpoint`)."""

    config: NetworkConfig
    desk: TaskDesk
    push: PushSender
    store: TaskStore

    #: ``hosted(agent_id)``: the hosted agent ``agent_id`` (None when not hosted here)
    hosted: Callable[[str], Awaitable[AgentInfo | None]]

    def owner(self, request: web.Request) -> str | None:
        """Who calls (None: refused)."""
        ...

    async def primary(self) -> AgentInfo | None:
        """The node's primary agent."""
        ...

    def version_error(self, request: web.Request) -> RpcError | None:
        """VersionNotSupportedError for an ``A2A-Version`` not served."""
        ...

    async def send(self, caller: Caller, params: dict[str, Any], legacy: bool) -> dict[str, Any]:
        """``SendMessage``."""
        ...

    async def extended_card(self, request: web.Request, caller: Caller) -> dict[str, Any]:
        """``GetExtendedAgentCard``."""
        ...


class RestBinding:
    """The HTTP+JSON routes of ``endpoint``'s agents."""

    def __init__(self, endpoint: RestHost) -> None:
        self.endpoint = endpoint

    def add_routes(self, router: web.UrlDispatcher, prefix: str) -> None:
        """Add the routes under ``prefix`` (``/agents/{agent_id}``, or ``""`` for the
        primary agent at the origin)."""
        tid = "{task_id:[^/:]+}"
        cid = "{config_id:[^/]+}"
        h = self._wrap
        router.add_post(f"{prefix}/message:send", h(self._send))
        router.add_post(f"{prefix}/message:stream", h(self._stream))
        router.add_get(f"{prefix}/tasks", h(self._list))
        router.add_get(f"{prefix}/tasks/{tid}", h(self._get))
        router.add_post(f"{prefix}/tasks/{tid}:cancel", h(self._cancel))
        router.add_get(f"{prefix}/tasks/{tid}:subscribe", h(self._subscribe))
        router.add_post(f"{prefix}/tasks/{tid}:subscribe", h(self._subscribe))
        configs = f"{prefix}/tasks/{tid}/pushNotificationConfigs"
        router.add_post(configs, h(functools.partial(self._push, "create")))
        router.add_get(configs, h(functools.partial(self._push, "list")))
        router.add_get(f"{configs}/{cid}", h(functools.partial(self._push, "get")))
        router.add_delete(f"{configs}/{cid}", h(functools.partial(self._push, "delete")))
        router.add_get(f"{prefix}/extendedAgentCard", h(self._extended_card))

    def _wrap(self, run: Callable[[web.Request, Any], Awaitable[Any]]) -> Handler:
        """A route: the caller checked (401), the agent found (404), ``run(request,
        caller)``'s result as JSON, an :class:`RpcError` as a problem."""

        async def handler(request: web.Request) -> web.StreamResponse:
            ep = self.endpoint
            try:
                owner = ep.owner(request)
                if owner is None:
                    return web.Response(
                        status=401,
                        body=dumps({"type": "about:blank", "title": "Unauthorized", "status": 401}),
                        content_type=PROBLEM_JSON,
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                agent_id = request.match_info.get("agent_id")
                info = await (ep.hosted(agent_id) if agent_id is not None else ep.primary())
                if info is None:
                    raise RpcError(-32001, "Not found: no such agent on this node", "NOT_FOUND")
                version = ep.version_error(request)
                if version is not None:
                    raise version
                result = await run(request, (info.agent_id, owner))
                if isinstance(result, web.StreamResponse):
                    return result
                return web.Response(body=dumps(result), content_type="application/json")
            except RpcError as exc:
                return problem(exc)
            except ConnectionError:
                raise
            except Exception as exc:
                log.exception("A2A REST request failed")
                return problem(RpcError(-32603, f"Internal error: {exc}", "INTERNAL"))

        return handler

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            raw = await read_body(request, self.endpoint.config.server.max_body_bytes)
        except BodyTooLarge as exc:
            raise RpcError(-32600, f"Invalid request: {exc}", "INVALID_REQUEST") from None
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RpcError(-32700, "Parse error: invalid JSON", "PARSE_ERROR") from None
        if not isinstance(body, dict):
            raise invalid_params("the body must be a JSON object")
        converted: dict[str, Any] = camel_keys(body)
        return converted

    async def _send(self, request: web.Request, caller: Any) -> Any:
        return await self.endpoint.send(caller, await self._body(request), False)

    async def _stream(self, request: web.Request, caller: Any) -> Any:
        desk = self.endpoint.desk
        turn, _, length = await desk.turn(caller, await self._body(request))
        start = functools.partial(desk.start, turn)
        return await stream_task(request, None, turn[0], False, start, length, rest=True)

    async def _list(self, request: web.Request, caller: Any) -> Any:
        return await self.endpoint.desk.list(caller, _query_params(request), False)

    async def _get(self, request: web.Request, caller: Any) -> Any:
        params = {**_query_params(request), "id": request.match_info["task_id"]}
        return await self.endpoint.desk.get(caller, params, False)

    async def _cancel(self, request: web.Request, caller: Any) -> Any:
        params = {"id": request.match_info["task_id"]}
        return await self.endpoint.desk.cancel(caller, params, False)

    async def _subscribe(self, request: web.Request, caller: Any) -> Any:
        task = await self.endpoint.desk.task(caller, request.match_info["task_id"])
        if task.terminal:
            raise RpcError(
                -32004,
                f"Unsupported operation: subscribing to task {task.id}, which is {task.state},"
                " is not supported",
                "UNSUPPORTED_OPERATION",
            )
        return await stream_task(request, None, task, False, None, rest=True)

    async def _push(self, action: str, request: web.Request, caller: Any) -> Any:
        ep = self.endpoint
        ep.push.check()
        task_id = request.match_info["task_id"]
        task = await ep.desk.task(caller, task_id)
        params: dict[str, Any] = {"taskId": task_id}
        if action == "create":
            params.update(await self._body(request))
            params["taskId"] = task_id
        elif "config_id" in request.match_info:
            params["id"] = request.match_info["config_id"]
        method = {"create": "Create", "list": "List", "get": "Get", "delete": "Delete"}[action]
        result, changed = push_method(method, task, params, False)
        if changed:
            await ep.store.save(task)
        return result

    async def _extended_card(self, request: web.Request, caller: Any) -> Any:
        return await self.endpoint.extended_card(request, caller)
