"""The admin API's JSON conventions: JSON-ready values, the error body
``{"error": {"type": ..., "message": ...}}`` and its status per error of ours, and reading
query parameters and request bodies."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import (
    AmbiguousMessageError,
    ConfigurationError,
    ConversationClosedError,
    ConversationNotFoundError,
    DuplicateMessageError,
    InvalidMessageError,
    MessagingError,
    NotAParticipantError,
    PermissionDeniedError,
    QueueFullError,
    RequestFailedError,
    RequestTimeoutError,
    RoutingError,
    UnknownMessageError,
)

__all__ = [
    "MAX_LIMIT",
    "HTTPError",
    "error_response",
    "int_param",
    "json_body",
    "jsonable",
    "status_of",
]

MAX_LIMIT = 10_000
"""The largest ``limit`` a route accepts."""


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (anything JSON does not know becomes its ``str``)."""
    return json.loads(json.dumps(value, default=str))


class HTTPError(Exception):
    """A route's refusal: answered as an error body with ``status``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def error_response(status: int, kind: str, message: str) -> web.Response:
    """The JSON error body ``{"error": {"type": kind, "message": message}}``."""
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (UnknownMessageError, 404),
    (ConversationNotFoundError, 404),
    (PermissionDeniedError, 403),
    (NotAParticipantError, 403),
    (DuplicateMessageError, 409),
    (AmbiguousMessageError, 409),
    (ConversationClosedError, 409),
    (ConfigurationError, 400),
    (RequestTimeoutError, 504),
    (RequestFailedError, 502),
    (QueueFullError, 503),
    (RoutingError, 422),
    (InvalidMessageError, 400),
)


def status_of(exc: MessagingError) -> int:
    """The HTTP status that answers ``exc`` (500 for an error without one)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def int_param(request: web.Request, name: str, default: int, low: int = 1) -> int:
    """The integer query parameter ``name`` in ``low..MAX_LIMIT`` (``default`` if absent)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, "InvalidParameter", f"{name} must be an integer") from None
    if value < low or value > MAX_LIMIT:
        raise HTTPError(400, "InvalidParameter", f"{name} must be in {low}..{MAX_LIMIT}")
    return value


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's body, which must be a JSON object."""
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "InvalidJSON", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "InvalidJSON", "the request body must be a JSON object")
    return body
