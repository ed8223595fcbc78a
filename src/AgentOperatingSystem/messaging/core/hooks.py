"""Extension points the bus calls on its paths: security and telemetry.

The bus holds one :class:`SecurityHooks` and, when observability is enabled, one
:class:`TelemetryHooks`. Each has cheap defaults so that, when a feature is off, the hot path
pays one attribute check and nothing else.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..types import Message, MessageType

__all__ = ["SecurityHooks", "TelemetryHooks"]


class SecurityHooks(Protocol):
    """What the bus asks of its security layer (see :mod:`.security`)."""

    #: True when access control has any entry or denies by default: the bus then calls
    #: ``authorize_*`` on every publish and subscribe.
    acl_active: bool
    #: True when every published message is signed.
    signing: bool
    #: True when consumers must dead-letter messages that fail verification.
    require_signatures: bool

    async def start(self) -> None:
        """Load keys and permissions."""
        ...

    async def close(self) -> None:
        """Release resources."""
        ...

    def authorize_publish(
        self, sender_id: str, message_type: MessageType, answering: Message | None = None
    ) -> None:
        """Raise ``PermissionDeniedError`` when ``sender_id`` may not publish that type;
        ``answering`` is the message whose handler publishes (its answer is always allowed)."""
        ...

    def authorize_subscribe(self, agent_id: str, message_type: MessageType) -> None:
        """Raise ``PermissionDeniedError`` when ``agent_id`` may not receive that type."""
        ...

    async def set_permissions(
        self,
        agent_id: str,
        can_publish: list[str] | None,
        can_subscribe: list[str] | None,
    ) -> None:
        """Store and apply an agent's permissions."""
        ...

    async def sign(self, message: Message) -> None:
        """Sign ``message`` with its sender's private key (writes ``aos.signature``)."""
        ...

    def verify(self, message: Message) -> bool:
        """True when the message carries a valid signature of its sender."""
        ...

    async def verify_async(self, message: Message) -> bool:
        """Like :meth:`verify`, re-reading the sender's keys when its key id is unknown here."""
        ...

    def content_key(self, key_id: str) -> bytes | None:
        """The content-encryption key with that id, if this process has it."""
        ...

    def remember_content_key(self, key: bytes) -> str:
        """Add a content-encryption key to the key ring; return its id."""
        ...


class TelemetryHooks(Protocol):
    """What the bus reports to observability (see :mod:`.observability`)."""

    def on_publish(self, message: Message, queues: list[str]) -> AbstractContextManager[Any]:
        """A context around a publish (a span); it may inject trace context into metadata."""
        ...

    def on_handle(
        self, agent_id: str, message: Message, attempt: int, enqueued_at: float
    ) -> AbstractContextManager[Any]:
        """A context around a handler call (a span linked to the publisher's)."""
        ...

    def on_settle(self, agent_id: str, message_type: str, outcome: str) -> None:
        """``outcome`` is one of delivered, acked, nacked, dead_lettered, expired."""
        ...

    #: True when every message needs ``on_publish``/``on_handle`` (spans or listeners);
    #: False lets the bus use the batched calls below.
    per_message: bool
    #: Batched path: publishes the bus counted inline, (queue, message type) -> count.
    published_counts: dict[tuple[str, str], int]

    def count_publish(self, queue: str, message_type: str) -> None:
        """Batched path: one successful publish."""
        ...

    def count_error(self, queue: str, message_type: str) -> None:
        """Batched path: one handler call that raised."""
        ...

    def record_batch(
        self, queue: str, acked: dict[str, int], samples: list[tuple[str, float, float]]
    ) -> None:
        """Batched path: handled-and-acked counts per type, and sampled
        ``(message_type, delivery latency, handler duration)``."""
        ...
