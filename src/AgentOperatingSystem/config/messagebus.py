"""``MessageBusConfig``: how a :class:`~AgentOperatingSystem.messaging.bus.MessageBus` behaves."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from ..messaging.errors import ConfigurationError
from ..messaging.policy import RetryPolicy
from .urls import is_nats_url

__all__ = ["MessageBusConfig"]


def _default_data_dir() -> str:
    return os.environ.get("AOS_DATA_DIR") or "./.aos"


@dataclass
class MessageBusConfig:
    """Settings of one bus.

    The engine is chosen by ``broker_url`` (``memory://``, ``sqlite:///path.db``,
    ``nats://host:4222``). Without a URL, ``enable_persistence=True`` means SQLite in
    ``data_dir`` (``$AOS_DATA_DIR`` or ``./.aos``) and ``False`` means memory.
    """

    enable_persistence: bool = True
    max_queue_size: int = 10_000
    message_ttl_seconds: float | None = None
    broker_url: str | None = None
    data_dir: str = field(default_factory=_default_data_dir)
    sign_messages: bool = False
    require_signatures: bool = False
    lock_seconds: float = 30.0
    default_retry_policy: RetryPolicy | Mapping[str, Any] | None = None
    dedup_window_seconds: float = 600.0
    processed_ttl_seconds: float = 86_400.0
    max_message_bytes: int = 1024 * 1024
    prefetch: int = 64
    #: Seconds a consumer backs off after a receive that failed (the engine unreachable)
    #: before it tries again. It is no longer a polling period: an idle consumer waits on
    #: its engine's wake-up (a send or release from any process on the engine, a delay,
    #: backoff or lock coming due) and costs nothing meanwhile; each engine keeps at most
    #: one slow safety poll of its own, whatever the number of agents.
    poll_interval: float = 0.2
    hop_limit: int = 32
    shutdown_timeout: float = 10.0
    default_sender_id: str = "aos"
    default_permission: Literal["allow", "deny"] = "allow"
    storage_url: str | None = None
    enable_tracing: bool = False
    enable_metrics: bool = False
    #: With metrics but no spans, time one handler in this many (latency and duration
    #: histograms are sampled; every counter stays exact). 1 times every handler.
    metrics_sample_every: int = 8
    #: ``request()`` hands a plain at-least-once request straight to a consumer of the
    #: recipient's queue that is live right now, when the engine can (NATS): no stored
    #: copy, one trip fewer. A consumer process that dies holding such a request loses it
    #: (the waiting requester gets ``RequestTimeoutError``); False stores every request.
    direct_requests: bool = True
    #: Whole seconds an answer may wait unread in a reply queue (``_reply.<bus id>``). An
    #: answer sent there carries this TTL (unless it has its own), and each bus sweeps the
    #: reply queues of other buses every ``reply_ttl_seconds``: an answer left in the queue
    #: of a requester that stopped or died is dead-lettered (reason ``expired``) less than
    #: ``2 * reply_ttl_seconds`` after it was sent (:mod:`..messaging.core.collect`). A live
    #: requester reads its answers in milliseconds, so this need not cover request timeouts:
    #: only how long a live requester may go without reading (an engine outage).
    reply_ttl_seconds: int = 300

    def __post_init__(self) -> None:
        for name in (
            "max_queue_size",
            "max_message_bytes",
            "prefetch",
            "hop_limit",
            "metrics_sample_every",
            "reply_ttl_seconds",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
        for name in (
            "lock_seconds",
            "dedup_window_seconds",
            "processed_ttl_seconds",
            "poll_interval",
            "shutdown_timeout",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
        if self.message_ttl_seconds is not None and (
            isinstance(self.message_ttl_seconds, bool)
            or not isinstance(self.message_ttl_seconds, (int, float))
            or self.message_ttl_seconds <= 0
        ):
            raise ConfigurationError("message_ttl_seconds must be a positive number or None")
        if self.default_permission not in ("allow", "deny"):
            raise ConfigurationError("default_permission must be 'allow' or 'deny'")
        self.default_retry_policy = RetryPolicy.parse(self.default_retry_policy) or RetryPolicy()

    @property
    def retry_policy(self) -> RetryPolicy:
        """The default retry policy as a :class:`RetryPolicy`."""
        policy = self.default_retry_policy
        assert isinstance(policy, RetryPolicy)
        return policy

    def resolved_broker_url(self) -> str:
        """The engine URL this config selects."""
        if self.broker_url:
            return self.broker_url
        if not self.enable_persistence:
            return "memory://"
        path = Path(self.data_dir).expanduser().resolve() / "messages.db"
        return f"sqlite:///{path}"

    def resolved_storage_url(self) -> str:
        """The StorageManager URL (key ring, permissions) that goes with this bus."""
        if self.storage_url:
            return self.storage_url
        url = self.resolved_broker_url()
        if url.startswith("sqlite:"):
            base = url.split("?", 1)[0]  # engine options are not storage options
            return base[: -len(".db")] + "-store.db" if base.endswith(".db") else base + "-store"
        if is_nats_url(url):
            return url
        return "memory://"
