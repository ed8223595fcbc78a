"""The node-to-node HTTP wire, both sides: paths and media types, canonical node addresses,
the JSON bodies of answers and errors, and reading a request body under a size limit.

``POST /aos/v1/messages`` carries one message as a CloudEvents 1.0 event in structured JSON
mode (``Content-Type: application/cloudevents+json``) or a CloudEvents JSON batch
(``application/cloudevents-batch+json``); the answer to one message is ``202
{"accepted":true,"duplicate":false}``; an error is ``{"error": {"code": ..., "message":
...}}``.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from yarl import URL

from ..errors import ConfigurationError

__all__ = [
    "API_PREFIX",
    "CARD_PATH",
    "CLOUDEVENTS_BATCH",
    "CLOUDEVENTS_JSON",
    "HEADER_NODE",
    "MAX_BATCH_MESSAGES",
    "normalize_address",
]

#: The logger of the whole network layer.
log = logging.getLogger("aos.messaging.network")

API_PREFIX = "/aos/v1"
HEADER_NODE = "X-AOS-Node"
CLOUDEVENTS_JSON = "application/cloudevents+json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
#: most messages a node accepts in one batch request
MAX_BATCH_MESSAGES = 1000
CARD_PATH = "/.well-known/agent-card.json"
ACCEPTED_BODY = b'{"accepted":true,"duplicate":false}'
DUPLICATE_BODY = b'{"accepted":true,"duplicate":true}'


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@functools.lru_cache(maxsize=1024)
def normalize_address(address: str) -> str:
    """``scheme://host[:port][/path]`` in canonical form (lower-case host, no default port,
    no trailing slash). Raises :class:`ConfigurationError` for anything but http(s) URLs."""
    if not isinstance(address, str):
        raise ConfigurationError(f"address must be a string URL, not {type(address).__name__}")
    parts = urlsplit(address.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"invalid address {address!r}: expected an http(s) URL such as 'http://host:8080'"
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"invalid port in address {address!r}") from exc
    default = 80 if parts.scheme == "http" else 443
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def endpoint(address: str, path: str) -> URL:
    """The URL of ``path`` on the node at ``address``."""
    return URL(address.rstrip("/") + path, encoded=True)


def remote_error(payload: bytes) -> tuple[str, str]:
    """``(code, message)`` of a JSON error body (best effort)."""
    try:
        data = json.loads(payload)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            return str(err.get("code", "error")), str(err.get("message", ""))[:500]
    except (ValueError, UnicodeDecodeError):
        pass
    return "error", payload[:200].decode("utf-8", "replace")


def answer_duplicate(payload: bytes) -> bool:
    """Whether an accepting answer says the node had the message already."""
    if payload == ACCEPTED_BODY:
        return False
    if payload == DUPLICATE_BODY:
        return True
    try:
        answer = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(answer, dict) and answer.get("duplicate") is True


# ---------------------------------------------------------------------------------- server


def error_response(status: int, code: str, message: str, **headers: str) -> web.Response:
    """An error answer: ``{"error": {"code", "message"}}``."""
    return web.Response(
        status=status,
        body=dumps({"error": {"code": code, "message": message}}),
        content_type="application/json",
        headers=headers or None,
    )


def accepted_response(duplicate: bool) -> web.Response:
    """The ``202`` answer to one accepted message."""
    return web.Response(
        status=202,
        body=DUPLICATE_BODY if duplicate else ACCEPTED_BODY,
        content_type="application/json",
    )


class BodyTooLarge(Exception):
    """A request body over the limit (-> 413)."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request's body; :class:`BodyTooLarge` past ``limit`` bytes."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise BodyTooLarge(f"request body is {length} bytes; the limit is {limit}")
        return await request.content.read()
    data = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        data += chunk
        if len(data) > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(data)
