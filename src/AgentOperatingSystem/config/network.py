"""``NetworkConfig``: how a network node
(:class:`~AgentOperatingSystem.messaging.network.node.NetworkProtocol`) listens,
authenticates its peers, pools connections and retries.

Node-to-node requests are signed with HMAC-SHA256 over the method, path, timestamp and body
using ``auth_secret``, a secret every node of a deployment shares (default: the environment
variable ``AOS_NETWORK_SECRET``). A node without a secret refuses node-to-node messages
(``401``) unless ``allow_unsigned=True`` (local development only). The A2A endpoints are
public unless ``a2a_auth_token`` is set, in which case they require
``Authorization: Bearer <token>``; agent cards are always public, as A2A discovery expects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import urlsplit

from ..messaging.errors import ConfigurationError

__all__ = ["NetworkConfig"]

#: Shortest accepted shared secret, in bytes.
MIN_SECRET_BYTES = 16


def _env_secret() -> str | None:
    return os.environ.get("AOS_NETWORK_SECRET") or None


def _secret_bytes(value: str | bytes, name: str) -> bytes:
    if isinstance(value, str):
        raw = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        raise ConfigurationError(f"{name} must be str or bytes, not {type(value).__name__}")
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigurationError(f"{name} must be at least {MIN_SECRET_BYTES} bytes long")
    return raw


@dataclass
class NetworkConfig:
    """Settings of one network node (all times in seconds).

    Listening:
        ``host``/``port`` to bind (``port=0`` picks a free port; the node's ``url`` tells which);
        ``public_url`` is the address other nodes and A2A clients use to reach this node
        (default ``http://{host}:{port}``); ``node_id`` names the node (default: random).
    Authentication:
        ``auth_secret`` (>= 16 bytes) signs and verifies node-to-node requests;
        ``previous_auth_secrets`` are still accepted when verifying (key rotation);
        ``signature_max_age`` is the accepted clock skew of a request's timestamp;
        ``allow_unsigned`` accepts unsigned node requests when no secret is set.
    Connection pool:
        ``max_connections`` (total) and ``max_connections_per_host`` (0 = no per-host cap) open
        TCP connections, kept alive for ``idle_timeout``; ``connect_timeout``,
        ``request_timeout`` bound each request.
    Retries and circuit breaking (per remote node):
        a transient failure (connection error, timeout, 429, 5xx) is retried ``max_retries``
        times after ``retry_initial_delay * retry_backoff_multiplier ** n`` seconds (capped at
        ``retry_max_delay``, spread by ``retry_jitter``); ``circuit_failure_threshold``
        failures within ``circuit_window_seconds`` open the node's circuit for
        ``circuit_recovery_timeout``.
    Batching (per remote node):
        while ``batch_after`` requests to one node are in flight, further sends to it wait and
        go together, up to ``max_batch`` messages (and ``max_body_bytes``) in one request
        (a CloudEvents JSON batch), each with its own result; ``max_batch=1`` never batches.
    Limits and storage:
        ``max_body_bytes`` caps a request body (413 above it); ``storage_url`` selects the
        StorageManager holding the agent registry when the node is not given one
        (default ``memory://``); ``registry_cache_seconds`` is how long registry look-ups are
        cached; ``outbox_poll_interval`` is how often resubmitted failed sends are picked up.
    A2A:
        ``a2a_enabled`` serves agent cards and the JSON-RPC endpoints; ``a2a_auth_token``
        protects the JSON-RPC endpoints; ``a2a_request_timeout`` bounds how long an A2A call
        waits for the agent; ``a2a_max_tasks`` finished tasks are remembered for ``GetTask``.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    node_id: str | None = None
    auth_secret: str | bytes | None = field(default_factory=_env_secret)
    previous_auth_secrets: Sequence[str | bytes] = ()
    allow_unsigned: bool = False
    signature_max_age: float = 300.0
    max_connections: int = 100
    max_connections_per_host: int = 0
    idle_timeout: float = 300.0
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    max_retries: int = 3
    retry_initial_delay: float = 0.1
    retry_backoff_multiplier: float = 2.0
    retry_max_delay: float = 5.0
    retry_jitter: float = 0.1
    circuit_failure_threshold: int = 5
    circuit_window_seconds: float = 60.0
    circuit_recovery_timeout: float = 30.0
    max_body_bytes: int = 1024 * 1024
    storage_url: str | None = None
    registry_cache_seconds: float = 1.0
    outbox_poll_interval: float = 1.0
    shutdown_timeout: float = 5.0
    a2a_enabled: bool = True
    a2a_auth_token: str | None = None
    a2a_request_timeout: float = 60.0
    a2a_max_tasks: int = 1000
    batch_after: int = 4
    max_batch: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigurationError("host must be a non-empty string")
        if (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not 0 <= self.port <= 65535
        ):
            raise ConfigurationError(f"port must be an int in 0..65535, got {self.port!r}")
        if self.public_url is not None:
            self.public_url = _check_url(self.public_url, "public_url")
        if self.node_id is not None and (not isinstance(self.node_id, str) or not self.node_id):
            raise ConfigurationError("node_id must be a non-empty string or None")
        if self.auth_secret is not None:
            _secret_bytes(self.auth_secret, "auth_secret")
        if isinstance(self.previous_auth_secrets, (str, bytes)):
            raise ConfigurationError("previous_auth_secrets must be a sequence of secrets")
        for old in self.previous_auth_secrets:
            _secret_bytes(old, "previous_auth_secrets entry")
        self.previous_auth_secrets = tuple(self.previous_auth_secrets)
        ints_min = {
            "max_connections": 1,
            "max_connections_per_host": 0,
            "max_retries": 0,
            "circuit_failure_threshold": 1,
            "max_body_bytes": 1024,
            "a2a_max_tasks": 1,
            "batch_after": 1,
            "max_batch": 1,
        }
        for name, low in ints_min.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigurationError(f"{name} must be an int >= {low}, got {value!r}")
        positive = (
            "signature_max_age",
            "idle_timeout",
            "connect_timeout",
            "request_timeout",
            "circuit_window_seconds",
            "outbox_poll_interval",
            "shutdown_timeout",
            "a2a_request_timeout",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
        non_negative = (
            "retry_initial_delay",
            "retry_max_delay",
            "circuit_recovery_timeout",
            "registry_cache_seconds",
        )
        for name in non_negative:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}")
        mult = self.retry_backoff_multiplier
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult < 1:
            raise ConfigurationError("retry_backoff_multiplier must be a number >= 1")
        jitter = self.retry_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise ConfigurationError("retry_jitter must be between 0 and 1")
        if self.a2a_auth_token is not None and (
            not isinstance(self.a2a_auth_token, str) or not self.a2a_auth_token
        ):
            raise ConfigurationError("a2a_auth_token must be a non-empty string or None")
        if self.storage_url is not None and (
            not isinstance(self.storage_url, str) or "://" not in self.storage_url
        ):
            raise ConfigurationError("storage_url must be a URL such as 'sqlite:///path.db'")

    @property
    def secret(self) -> bytes | None:
        """The signing secret as bytes (None when not configured)."""
        if self.auth_secret is None:
            return None
        return _secret_bytes(self.auth_secret, "auth_secret")

    @property
    def verification_secrets(self) -> tuple[bytes, ...]:
        """Every secret a signature is checked against: the current one, then older ones."""
        out: list[bytes] = []
        current = self.secret
        if current is not None:
            out.append(current)
        out.extend(_secret_bytes(s, "previous secret") for s in self.previous_auth_secrets)
        return tuple(out)

    @property
    def max_attempts(self) -> int:
        """Attempts per send: the first one plus ``max_retries``."""
        return 1 + self.max_retries

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), before jitter."""
        base = self.retry_initial_delay * self.retry_backoff_multiplier ** max(0, attempt - 1)
        return float(min(base, self.retry_max_delay))


def _check_url(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name} must be an http(s) URL such as 'http://host:8080'")
    return value.rstrip("/")
