"""Engine URLs: which engine a URL names, and the parts of a NATS URL.

Ground for every layer: the bus, the NATS engine and the NATS store read a URL the same way.
A NATS URL is one or more servers, comma-separated, each ``nats://``, ``tls://``, ``ws://`` or
``wss://`` (a bare ``host:port`` means ``nats://``), with query options ``namespace`` and
``replicas``: ``nats://a:4222,b:4222?namespace=prod&replicas=3``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from ..messaging.errors import ConfigurationError

__all__ = ["NATS_SCHEMES", "NATS_URL_OPTIONS", "is_nats_url", "parse_nats_url"]

#: The URL schemes of a NATS server (plain, TLS, WebSocket, secure WebSocket).
NATS_SCHEMES = ("nats", "tls", "ws", "wss")
#: The query options a NATS engine URL accepts.
NATS_URL_OPTIONS = frozenset({"namespace", "replicas"})


def is_nats_url(url: str) -> bool:
    """Whether ``url`` names a NATS engine (any of :data:`NATS_SCHEMES`)."""
    scheme, sep, _ = url.strip().partition("://")
    return bool(sep) and scheme.lower() in NATS_SCHEMES


def parse_nats_url(url: str) -> tuple[list[str], dict[str, str]]:
    """Split an engine URL into server URLs and query options (``namespace``, ``replicas``)."""
    base, _, query = url.strip().partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - NATS_URL_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"unknown NATS URL options {sorted(unknown)}; allowed: namespace, replicas"
        )
    servers: list[str] = []
    for part in base.split(","):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            part = "nats://" + part
        scheme, _, rest = part.partition("://")
        if scheme.lower() not in NATS_SCHEMES or not rest.strip("/"):
            raise ConfigurationError(f"not a NATS server URL: {part!r}")
        servers.append(part.rstrip("/"))
    if not servers:
        raise ConfigurationError(f"no NATS server in URL {url!r}")
    return servers, options
