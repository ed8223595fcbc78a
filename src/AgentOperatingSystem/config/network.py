"""``NetworkConfig``: how a network node
(:class:`~AgentOperatingSystem.messaging.network.node.NetworkProtocol`) listens,
authenticates its peers, pools connections and retries.

Node-to-node requests are signed with HMAC-SHA256 over the method, path, timestamp and body
using ``auth_secret``, a secret every node of a deployment shares (default: the environment
variable ``AOS_NETWORK_SECRET``). A node without a secret refuses node-to-node messages
(``401``) unless ``allow_unsigned=True`` (local development only). The A2A endpoints are
public unless ``a2a_auth_token`` is set, in which case they require
``Authorization: Bearer <token>``; agent cards are always public, as A2A discovery expects.

The settings are grouped by concern, one small dataclass each, validated on its own:
:class:`ServerConfig`, :class:`AuthConfig`, :class:`PoolConfig`, :class:`RetryConfig`,
:class:`CircuitConfig`, :class:`BatchConfig`, :class:`RegistryConfig`,
:class:`OutboxConfig`, :class:`A2AConfig` and :class:`LimitsConfig`. :class:`NetworkConfig`
holds one of each
(``config.retry``, ``config.a2a``, ...) and also takes and reads every setting by its flat
name, so ``NetworkConfig(port=8080, auth_secret=..., max_retries=5)`` and
``config.max_retries`` work as they always did; a flat keyword is applied on top of the
group it belongs to (``NetworkConfig(retry=RetryConfig(...), port=0)``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Sequence, TypedDict, Unpack
from urllib.parse import urlsplit

from ..messaging.errors import ConfigurationError
from .forwarding import Forwarded

__all__ = [
    "A2AConfig",
    "AuthConfig",
    "BatchConfig",
    "CircuitConfig",
    "LimitsConfig",
    "NetworkConfig",
    "NetworkKeywords",
    "NetworkSettings",
    "OutboxConfig",
    "PoolConfig",
    "RegistryConfig",
    "RetryConfig",
    "ServerConfig",
]

#: Shortest accepted shared secret, in bytes.
MIN_SECRET_BYTES = 16



# ---------------------------------------------------------------------------- checks


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


def _check_url(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name} must be an http(s) URL such as 'http://host:8080'")
    return value.rstrip("/")


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"{name} must be an int >= {low}, got {value!r}")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")


def _non_negative(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}")


def _optional_text(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigurationError(f"{name} must be a non-empty string or None")


# ---------------------------------------------------------------------------- groups


@dataclass
class ServerConfig:
    """Where the node listens and what it accepts.

    ``host``/``port`` to bind (``port=0`` picks a free port; the node's ``url`` tells which);
    ``public_url`` is the address other nodes and A2A clients use to reach this node
    (default ``http://{host}:{port}``); ``node_id`` names the node (default: random);
    ``max_body_bytes`` caps a request body, both ways (413 above it); ``shutdown_timeout``
    bounds how long ``stop()`` waits for requests in progress.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    node_id: str | None = None
    max_body_bytes: int = 1024 * 1024
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigurationError("host must be a non-empty string")
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be an int in 0..65535, got {port!r}")
        if self.public_url is not None:
            self.public_url = _check_url(self.public_url, "public_url")
        _optional_text("node_id", self.node_id)
        _int_at_least("max_body_bytes", self.max_body_bytes, 1024)
        _positive("shutdown_timeout", self.shutdown_timeout)


@dataclass
class AuthConfig:
    """How node-to-node requests are signed and checked.

    ``auth_secret`` (>= 16 bytes; default: env ``AOS_NETWORK_SECRET``) signs and verifies
    them; ``previous_auth_secrets`` are still accepted when verifying (key rotation);
    ``signature_max_age`` is the accepted clock skew of a request's timestamp;
    ``allow_unsigned`` accepts unsigned node requests when no secret is set.
    ``cloudevents_token`` (>= 16 bytes) is the bearer token foreign producers present on the
    CloudEvents HTTP route (``POST /aos/v1/agents/{agent_id}/events``, see
    :mod:`~AgentOperatingSystem.messaging.network.cloudevents`); without one that route
    refuses every request (``401``) unless ``allow_unsigned`` is True (development only).
    """

    auth_secret: str | bytes | None = field(default_factory=_env_secret)
    previous_auth_secrets: Sequence[str | bytes] = ()
    allow_unsigned: bool = False
    signature_max_age: float = 300.0
    cloudevents_token: str | None = None

    def __post_init__(self) -> None:
        if self.auth_secret is not None:
            _secret_bytes(self.auth_secret, "auth_secret")
        if isinstance(self.previous_auth_secrets, (str, bytes)):
            raise ConfigurationError("previous_auth_secrets must be a sequence of secrets")
        for old in self.previous_auth_secrets:
            _secret_bytes(old, "previous_auth_secrets entry")
        self.previous_auth_secrets = tuple(self.previous_auth_secrets)
        _positive("signature_max_age", self.signature_max_age)
        if self.cloudevents_token is not None:
            if not isinstance(self.cloudevents_token, str):
                raise ConfigurationError("cloudevents_token must be a string or None")
            _secret_bytes(self.cloudevents_token, "cloudevents_token")

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


@dataclass
class PoolConfig:
    """The client's TCP connections: ``max_connections`` in all and
    ``max_connections_per_host`` (0 = no per-host cap) open at once, kept alive for
    ``idle_timeout``; ``connect_timeout`` and ``request_timeout`` bound each request."""

    max_connections: int = 100
    max_connections_per_host: int = 0
    idle_timeout: float = 300.0
    connect_timeout: float = 5.0
    request_timeout: float = 30.0

    def __post_init__(self) -> None:
        _int_at_least("max_connections", self.max_connections, 1)
        _int_at_least("max_connections_per_host", self.max_connections_per_host, 0)
        _positive("idle_timeout", self.idle_timeout)
        _positive("connect_timeout", self.connect_timeout)
        _positive("request_timeout", self.request_timeout)


@dataclass
class RetryConfig:
    """Retries of a transient failure (connection error, timeout, 429, 5xx): ``max_retries``
    more attempts, after ``initial_delay * backoff_multiplier ** n`` seconds (capped at
    ``max_delay``, spread by ``jitter``, a fraction in 0..1). Flat names: ``max_retries``,
    ``retry_initial_delay``, ``retry_backoff_multiplier``, ``retry_max_delay``,
    ``retry_jitter``."""

    max_retries: int = 3
    initial_delay: float = 0.1
    backoff_multiplier: float = 2.0
    max_delay: float = 5.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        _int_at_least("max_retries", self.max_retries, 0)
        _non_negative("retry_initial_delay", self.initial_delay)
        _non_negative("retry_max_delay", self.max_delay)
        mult = self.backoff_multiplier
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult < 1:
            raise ConfigurationError("retry_backoff_multiplier must be a number >= 1")
        jitter = self.jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise ConfigurationError("retry_jitter must be between 0 and 1")

    @property
    def max_attempts(self) -> int:
        """Attempts per send: the first one plus ``max_retries``."""
        return 1 + self.max_retries

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), before jitter."""
        base = self.initial_delay * self.backoff_multiplier ** max(0, attempt - 1)
        return float(min(base, self.max_delay))


@dataclass
class CircuitConfig:
    """The circuit breaker per remote node: ``failure_threshold`` failures within
    ``window_seconds`` open it for ``recovery_timeout``. Flat names:
    ``circuit_failure_threshold``, ``circuit_window_seconds``, ``circuit_recovery_timeout``."""

    failure_threshold: int = 5
    window_seconds: float = 60.0
    recovery_timeout: float = 30.0

    def __post_init__(self) -> None:
        _int_at_least("circuit_failure_threshold", self.failure_threshold, 1)
        _positive("circuit_window_seconds", self.window_seconds)
        _non_negative("circuit_recovery_timeout", self.recovery_timeout)


@dataclass
class BatchConfig:
    """Batching per remote node: while ``batch_after`` requests to one node are in flight,
    further sends to it wait and go together, up to ``max_batch`` messages (and the
    server's ``max_body_bytes``) in one request; ``max_batch=1`` never batches."""

    batch_after: int = 4
    max_batch: int = 64

    def __post_init__(self) -> None:
        _int_at_least("batch_after", self.batch_after, 1)
        _int_at_least("max_batch", self.max_batch, 1)


@dataclass
class RegistryConfig:
    """The agent registry: ``storage_url`` selects the StorageManager holding it when the
    node is not given one (default ``memory://``); look-ups are cached for
    ``cache_seconds``. Flat names: ``storage_url``, ``registry_cache_seconds``."""

    storage_url: str | None = None
    cache_seconds: float = 1.0

    def __post_init__(self) -> None:
        url = self.storage_url
        if url is not None and (not isinstance(url, str) or "://" not in url):
            raise ConfigurationError("storage_url must be a URL such as 'sqlite:///path.db'")
        _non_negative("registry_cache_seconds", self.cache_seconds)


@dataclass
class OutboxConfig:
    """The outbox of failed sends: resubmitted ones are picked up every ``poll_interval``
    seconds (flat name ``outbox_poll_interval``), or at once when the node is woken."""

    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        _positive("outbox_poll_interval", self.poll_interval)


@dataclass
class A2AConfig:
    """The A2A endpoints: ``enabled`` serves agent cards and the JSON-RPC endpoints;
    ``auth_token`` protects the JSON-RPC endpoints; ``request_timeout`` bounds how long an
    A2A call waits for the agent (past it the task is answered as it stands, working, and the
    agent's later answer is folded into it); at most ``max_tasks`` tasks are kept (finished
    ones are removed first); ``primary_agent`` is the agent whose card the node serves at
    its own ``/.well-known/agent-card.json`` (default: the first agent registered). Flat
    names: ``a2a_enabled``, ``a2a_auth_token``, ``a2a_request_timeout``, ``a2a_max_tasks``,
    ``a2a_primary_agent``. Push notifications (off by default: they make the node call URLs
    its clients give) are declared and sent when ``push_notifications`` is True, each event
    through the durable bus queue ``aos.a2a.push``, tried ``push_max_attempts`` times with a
    backoff from ``push_retry_delay`` seconds, then dead-lettered with the reason (flat
    names ``a2a_push_notifications``, ``a2a_push_max_attempts``, ``a2a_push_retry_delay``)."""

    enabled: bool = True
    auth_token: str | None = None
    request_timeout: float = 60.0
    max_tasks: int = 1000
    primary_agent: str | None = None
    push_notifications: bool = False
    push_max_attempts: int = 5
    push_retry_delay: float = 1.0

    def __post_init__(self) -> None:
        _optional_text("a2a_auth_token", self.auth_token)
        _optional_text("a2a_primary_agent", self.primary_agent)
        _int_at_least("a2a_push_max_attempts", self.push_max_attempts, 1)
        _non_negative("a2a_push_retry_delay", self.push_retry_delay)
        _positive("a2a_request_timeout", self.request_timeout)
        _int_at_least("a2a_max_tasks", self.max_tasks, 1)


@dataclass
class LimitsConfig:
    """What the node's HTTP server lets a client hold (safe defaults; all times in seconds).

    * ``max_inbound_connections`` -- connections open at once, in all; never more than half
      the process's open-file limit (``RLIMIT_NOFILE``), so the rest stays for the store, the
      engine and outgoing connections;
    * ``max_connections_per_client`` -- connections open at once from one client address
      (0: no per-address cap);
    * ``header_timeout`` -- a request's line and headers must arrive within this time of the
      connection opening (or of its first byte on a kept-alive connection);
    * ``body_timeout`` -- the whole body must arrive within this time of the headers;
    * ``keepalive_timeout`` -- an idle kept-alive connection is closed after this time.

    Past a limit the node first closes the connection that has waited longest without a
    complete request (idle, or still sending headers or body); when every connection is
    busy with a request, the newcomer is answered ``503`` and closed. A timed-out request is
    answered ``408`` and closed.
    """

    max_inbound_connections: int = 1024
    max_connections_per_client: int = 128
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0

    def __post_init__(self) -> None:
        _int_at_least("max_inbound_connections", self.max_inbound_connections, 1)
        _int_at_least("max_connections_per_client", self.max_connections_per_client, 0)
        _positive("header_timeout", self.header_timeout)
        _positive("body_timeout", self.body_timeout)
        _positive("keepalive_timeout", self.keepalive_timeout)


# ---------------------------------------------------------------------------- the whole


class NetworkSettings(TypedDict, total=False):
    """Every flat keyword :class:`NetworkConfig` takes; each one is a field of a group."""

    host: str
    port: int
    public_url: str | None
    node_id: str | None
    max_body_bytes: int
    shutdown_timeout: float
    auth_secret: str | bytes | None
    previous_auth_secrets: Sequence[str | bytes]
    allow_unsigned: bool
    signature_max_age: float
    cloudevents_token: str | None
    max_connections: int
    max_connections_per_host: int
    idle_timeout: float
    connect_timeout: float
    request_timeout: float
    max_retries: int
    retry_initial_delay: float
    retry_backoff_multiplier: float
    retry_max_delay: float
    retry_jitter: float
    circuit_failure_threshold: int
    circuit_window_seconds: float
    circuit_recovery_timeout: float
    batch_after: int
    max_batch: int
    storage_url: str | None
    registry_cache_seconds: float
    outbox_poll_interval: float
    a2a_enabled: bool
    a2a_auth_token: str | None
    a2a_request_timeout: float
    a2a_max_tasks: int
    a2a_primary_agent: str | None
    a2a_push_notifications: bool
    a2a_push_max_attempts: int
    a2a_push_retry_delay: float
    max_inbound_connections: int
    max_connections_per_client: int
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float


class NetworkKeywords(NetworkSettings, total=False):
    """Every keyword :class:`NetworkConfig` takes: the flat settings, and whole groups (a
    group given as None is built from its defaults)."""

    server: ServerConfig | None
    auth: AuthConfig | None
    pool: PoolConfig | None
    retry: RetryConfig | None
    circuit: CircuitConfig | None
    batching: BatchConfig | None
    registry: RegistryConfig | None
    outbox: OutboxConfig | None
    a2a: A2AConfig | None
    limits: LimitsConfig | None


_GROUPS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "auth": AuthConfig,
    "pool": PoolConfig,
    "retry": RetryConfig,
    "circuit": CircuitConfig,
    "batching": BatchConfig,
    "registry": RegistryConfig,
    "outbox": OutboxConfig,
    "a2a": A2AConfig,
    "limits": LimitsConfig,
}


@dataclass(init=False)
class NetworkConfig:
    """Settings of one network node (all times in seconds), one group per concern:
    :attr:`server`, :attr:`auth`, :attr:`pool`, :attr:`retry`, :attr:`circuit`,
    :attr:`batching`, :attr:`registry`, :attr:`outbox`, :attr:`a2a`, :attr:`limits` (each
    group's class says what its settings do).

    ``NetworkConfig(**settings)`` takes every setting by its flat name (see
    :class:`NetworkSettings`; ``port=8080``, ``max_retries=5``, ``a2a_auth_token=...``), and
    whole groups as keywords (``retry=RetryConfig(max_retries=5)``); a flat keyword is
    applied on top of its group. Every flat name also reads and writes the setting
    (``config.max_retries``).
    """

    server: ServerConfig
    auth: AuthConfig
    pool: PoolConfig
    retry: RetryConfig
    circuit: CircuitConfig
    batching: BatchConfig
    registry: RegistryConfig
    outbox: OutboxConfig
    a2a: A2AConfig
    limits: LimitsConfig

    def __init__(self, **settings: Unpack[NetworkKeywords]) -> None:
        given: dict[str, Any] = {}
        changes: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
        for name, value in settings.items():
            if name in _GROUPS:
                given[name] = value
                continue
            flat = _FLAT.get(name)
            if flat is None:
                raise TypeError(f"NetworkConfig got an unexpected keyword argument {name!r}")
            changes[flat.part][flat.attribute] = value
        for name, cls in _GROUPS.items():
            group, own = given.get(name), changes[name]
            if group is None:
                group = cls(**own)
            elif not isinstance(group, cls):
                raise ConfigurationError(f"{name} must be a {cls.__name__}")
            elif own:
                group = dataclasses.replace(group, **own)
            setattr(self, name, group)

    def replace(self, **settings: Unpack[NetworkSettings]) -> NetworkConfig:
        """A copy (of every group) with the flat ``settings`` changed, validated as at
        construction."""
        groups = {name: dataclasses.replace(getattr(self, name)) for name in _GROUPS}
        return NetworkConfig(**groups, **settings)

    # -- flat names, each read and written in its group ----------------------------------

    host = Forwarded[str]("server")
    port = Forwarded[int]("server")
    public_url = Forwarded[str | None]("server")
    node_id = Forwarded[str | None]("server")
    max_body_bytes = Forwarded[int]("server")
    shutdown_timeout = Forwarded[float]("server")
    auth_secret = Forwarded[str | bytes | None]("auth")
    previous_auth_secrets = Forwarded[Sequence[str | bytes]]("auth")
    allow_unsigned = Forwarded[bool]("auth")
    signature_max_age = Forwarded[float]("auth")
    cloudevents_token = Forwarded[str | None]("auth")
    max_connections = Forwarded[int]("pool")
    max_connections_per_host = Forwarded[int]("pool")
    idle_timeout = Forwarded[float]("pool")
    connect_timeout = Forwarded[float]("pool")
    request_timeout = Forwarded[float]("pool")
    max_retries = Forwarded[int]("retry")
    retry_initial_delay = Forwarded[float]("retry", "initial_delay")
    retry_backoff_multiplier = Forwarded[float]("retry", "backoff_multiplier")
    retry_max_delay = Forwarded[float]("retry", "max_delay")
    retry_jitter = Forwarded[float]("retry", "jitter")
    circuit_failure_threshold = Forwarded[int]("circuit", "failure_threshold")
    circuit_window_seconds = Forwarded[float]("circuit", "window_seconds")
    circuit_recovery_timeout = Forwarded[float]("circuit", "recovery_timeout")
    batch_after = Forwarded[int]("batching")
    max_batch = Forwarded[int]("batching")
    storage_url = Forwarded[str | None]("registry")
    registry_cache_seconds = Forwarded[float]("registry", "cache_seconds")
    outbox_poll_interval = Forwarded[float]("outbox", "poll_interval")
    a2a_enabled = Forwarded[bool]("a2a", "enabled")
    a2a_auth_token = Forwarded[str | None]("a2a", "auth_token")
    a2a_request_timeout = Forwarded[float]("a2a", "request_timeout")
    a2a_max_tasks = Forwarded[int]("a2a", "max_tasks")
    a2a_primary_agent = Forwarded[str | None]("a2a", "primary_agent")
    a2a_push_notifications = Forwarded[bool]("a2a", "push_notifications")
    a2a_push_max_attempts = Forwarded[int]("a2a", "push_max_attempts")
    a2a_push_retry_delay = Forwarded[float]("a2a", "push_retry_delay")
    max_inbound_connections = Forwarded[int]("limits")
    max_connections_per_client = Forwarded[int]("limits")
    header_timeout = Forwarded[float]("limits")
    body_timeout = Forwarded[float]("limits")
    keepalive_timeout = Forwarded[float]("limits")

    # -- derived -------------------------------------------------------------------------

    @property
    def secret(self) -> bytes | None:
        """The signing secret as bytes (None when not configured)."""
        return self.auth.secret

    @property
    def verification_secrets(self) -> tuple[bytes, ...]:
        """Every secret a signature is checked against: the current one, then older ones."""
        return self.auth.verification_secrets

    @property
    def max_attempts(self) -> int:
        """Attempts per send: the first one plus ``max_retries``."""
        return self.retry.max_attempts

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), before jitter."""
        return self.retry.delay(attempt)


#: Every flat setting by name (the descriptors above).
_FLAT: dict[str, Forwarded[Any]] = {
    name: value for name, value in vars(NetworkConfig).items() if isinstance(value, Forwarded)
}
