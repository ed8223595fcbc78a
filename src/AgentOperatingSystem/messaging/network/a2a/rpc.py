"""JSON-RPC 2.0 of the A2A endpoints: the method table (A2A 1.0 names and the 0.3 ones), the
A2A errors with their ``google.rpc.ErrorInfo`` details, the checks of a request object (its
``id`` kept exactly as sent) and of request parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "METHODS",
    "NO_ID",
    "Call",
    "RpcError",
    "camel_keys",
    "content_type_not_supported",
    "error_of",
    "invalid_params",
    "invalid_request",
    "optional_id",
    "parse_call",
    "push_not_supported",
    "request_id",
    "rpc_error",
    "rpc_result",
    "task_not_found",
    "unsupported",
]

#: JSON-RPC method -> (what it does, whether it is the A2A 0.3 name answered in 0.3 shapes)
METHODS: dict[str, tuple[str, bool]] = {
    "SendMessage": ("send", False),
    "SendStreamingMessage": ("stream", False),
    "GetTask": ("get", False),
    "CancelTask": ("cancel", False),
    "ListTasks": ("list", False),
    "SubscribeToTask": ("subscribe", False),
    "CreateTaskPushNotificationConfig": ("push", False),
    "GetTaskPushNotificationConfig": ("push", False),
    "ListTaskPushNotificationConfigs": ("push", False),
    "DeleteTaskPushNotificationConfig": ("push", False),
    "GetExtendedAgentCard": ("extended_card", False),
    "message/send": ("send", True),
    "message/stream": ("stream", True),
    "tasks/get": ("get", True),
    "tasks/cancel": ("cancel", True),
    "tasks/list": ("list", True),
    "tasks/resubscribe": ("subscribe", True),
    "tasks/pushNotificationConfig/set": ("push", True),
    "tasks/pushNotificationConfig/get": ("push", True),
    "tasks/pushNotificationConfig/list": ("push", True),
    "tasks/pushNotificationConfig/delete": ("push", True),
    "agent/getAuthenticatedExtendedCard": ("extended_card", True),
}
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DOMAIN = "a2a-protocol.org"
_MAX_ID_TEXT = 200


class _NoId:
    """The ``id`` of a notification: absent, so nothing is answered."""

    def __repr__(self) -> str:
        return "NO_ID"


#: A request without ``id`` (a notification, JSON-RPC 2.0 section 4.1).
NO_ID: Any = _NoId()


class RpcError(Exception):
    """A JSON-RPC error answer: ``code``, ``message``, the A2A ``reason`` and its
    ``metadata`` (both go into ``data`` as a ``google.rpc.ErrorInfo``)."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}


def invalid_request(message: str) -> RpcError:
    """``-32600 Invalid Request``."""
    return RpcError(-32600, f"Invalid Request: {message}", "INVALID_REQUEST")


def invalid_params(message: str) -> RpcError:
    """``-32602 Invalid params``."""
    return RpcError(-32602, f"Invalid params: {message}", "INVALID_PARAMS")


def task_not_found(task_id: str) -> RpcError:
    """``-32001 TaskNotFoundError``."""
    return RpcError(-32001, f"Task not found: {task_id}", "TASK_NOT_FOUND", {"taskId": task_id})


def push_not_supported() -> RpcError:
    """``-32003 PushNotificationNotSupportedError`` (the card declares no push notifications)."""
    return RpcError(
        -32003,
        "Push notifications are not supported by this agent",
        "PUSH_NOTIFICATION_NOT_SUPPORTED",
    )


def unsupported(what: str) -> RpcError:
    """``-32004 UnsupportedOperationError``."""
    return RpcError(
        -32004,
        f"Unsupported operation: {what} is not supported",
        "UNSUPPORTED_OPERATION",
    )


def content_type_not_supported(media_type: str) -> RpcError:
    """``-32005 ContentTypeNotSupportedError``."""
    return RpcError(
        -32005,
        f"Content type not supported: {media_type} is incompatible with this agent",
        "CONTENT_TYPE_NOT_SUPPORTED",
        {"mediaType": media_type},
    )


#: Keys whose values are the client's own data, kept as sent by :func:`camel_keys`.
_OPAQUE = frozenset({"data", "metadata", "raw"})


def camel_keys(value: Any) -> Any:
    """``value`` with its field names in lowerCamelCase: the proto3 JSON mapping has parsers
    accept the proto names too (``message_id`` for ``messageId``). The client's own data
    (``data``, ``metadata``, ``raw``) is left as it is."""
    if isinstance(value, list):
        return [camel_keys(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(key, str) and "_" in key.strip("_"):
            head, *rest = key.split("_")
            key = head + "".join(w[:1].upper() + w[1:] for w in rest)
        out[key] = item if key in _OPAQUE else camel_keys(item)
    return out


def optional_id(value: Any, name: str) -> str | None:
    """An optional id parameter (None when absent or empty)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > _MAX_ID_TEXT:
        raise invalid_params(f"{name} must be a string of at most {_MAX_ID_TEXT} characters")
    return value


@dataclass(frozen=True)
class Call:
    """One checked JSON-RPC request: its ``id`` exactly as sent (:data:`NO_ID` for a
    notification), the method's kind, whether it is a 0.3 name, and its params."""

    id: Any
    method: str
    kind: str
    legacy: bool
    params: dict[str, Any]

    @property
    def notification(self) -> bool:
        """True when the request has no ``id`` (nothing is answered)."""
        return self.id is NO_ID


def request_id(rpc: Any) -> Any:
    """The ``id`` to answer ``rpc`` with: as sent when it is a string, a number or null;
    :data:`NO_ID` when absent; None when it is of an invalid type (answered with null)."""
    if not isinstance(rpc, dict) or "id" not in rpc:
        return NO_ID if isinstance(rpc, dict) else None
    value = rpc["id"]
    if value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool)):
        return value
    return None


def parse_call(rpc: Any) -> Call:
    """Check one request object (JSON-RPC 2.0 section 4): :class:`RpcError` -32600 when it
    is not one (an ``id`` of another type than string, number or null included), -32601
    for an unknown method, -32602 when ``params`` is not an object."""
    if not isinstance(rpc, dict):
        raise invalid_request("not a JSON-RPC 2.0 request object")
    rid = request_id(rpc)
    if "id" in rpc and rid is None and rpc["id"] is not None:
        raise invalid_request("id must be a string, a number or null")
    if rpc.get("jsonrpc") != "2.0":
        raise invalid_request('jsonrpc must be "2.0"')
    method = rpc.get("method")
    if not isinstance(method, str):
        raise invalid_request("method must be a string")
    entry = METHODS.get(method)
    if entry is None:
        raise RpcError(
            -32601, f"Method not found: {method}", "METHOD_NOT_FOUND", {"method": method[:100]}
        )
    params = rpc.get("params", {})
    if not isinstance(params, dict):
        raise invalid_params("params must be an object")
    kind, legacy = entry
    return Call(rid, method, kind, legacy, camel_keys(params))


def rpc_error(
    request_id: Any,
    code: int,
    message: str,
    reason: str | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON-RPC error answer to ``request_id`` (:data:`NO_ID` is answered with null)."""
    err: dict[str, Any] = {"code": code, "message": message}
    if reason:
        err["data"] = [
            {"@type": _ERROR_INFO, "reason": reason, "domain": _DOMAIN, "metadata": metadata or {}}
        ]
    rid = None if request_id is NO_ID else request_id
    return {"jsonrpc": "2.0", "id": rid, "error": err}


def error_of(request_id: Any, exc: RpcError) -> dict[str, Any]:
    """The answer of ``exc`` to ``request_id``."""
    return rpc_error(request_id, exc.code, exc.message, exc.reason, exc.metadata)


def rpc_result(request_id: Any, result: Any) -> dict[str, Any]:
    """The JSON-RPC answer to ``request_id``."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}
