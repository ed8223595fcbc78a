"""JSON-RPC 2.0 of the A2A endpoints: the method table (A2A 1.0 names and the 0.3 ones),
errors with their ``google.rpc.ErrorInfo`` details, and checks of request parameters."""

from __future__ import annotations

from typing import Any

__all__ = ["METHODS", "RpcError", "invalid_params", "optional_id", "rpc_error", "rpc_result"]

#: JSON-RPC method -> (what it does, whether it is the A2A 0.3 name answered in 0.3 shapes)
METHODS = {
    "SendMessage": ("send", False),
    "SendStreamingMessage": ("stream", False),
    "GetTask": ("get", False),
    "CancelTask": ("cancel", False),
    "message/send": ("send", True),
    "message/stream": ("stream", True),
    "tasks/get": ("get", True),
    "tasks/cancel": ("cancel", True),
}
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_MAX_ID_TEXT = 200


class RpcError(Exception):
    """A JSON-RPC error answer: ``code``, ``message`` and the A2A ``reason``."""

    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


def invalid_params(message: str) -> RpcError:
    """``-32602 Invalid params``."""
    return RpcError(-32602, f"Invalid params: {message}", "INVALID_PARAMS")


def optional_id(value: Any, name: str) -> str | None:
    """An optional id parameter (None when absent or empty)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > _MAX_ID_TEXT:
        raise invalid_params(f"{name} must be a string of at most {_MAX_ID_TEXT} characters")
    return value


def rpc_error(
    request_id: Any, code: int, message: str, reason: str | None = None
) -> dict[str, Any]:
    """The JSON-RPC error answer to ``request_id``."""
    err: dict[str, Any] = {"code": code, "message": message}
    if reason:
        err["data"] = [
            {
                "@type": _ERROR_INFO,
                "reason": reason,
                "domain": "a2a-protocol.org",
                "metadata": {},
            }
        ]
    return {"jsonrpc": "2.0", "id": request_id, "error": err}


def rpc_result(request_id: Any, result: Any) -> dict[str, Any]:
    """The JSON-RPC answer to ``request_id``."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}
