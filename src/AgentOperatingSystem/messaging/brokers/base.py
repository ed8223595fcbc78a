"""The broker seam: the few async primitives every engine provides.

The bus decides delivery policy (retry and backoff, max attempts, TTL, dedup, exactly-once);
an engine only stores envelopes in named queues and hands them out under a lock. Every engine
passes the same contract suite in ``tests/brokers/contract/``.

Times (``available_at``, ``expires_at``, lock deadlines) are epoch seconds from the engine's
clock. A queue is created on first use. Message ids are unique among a queue's live messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol, Sequence, runtime_checkable

from ..policy import DEFAULT_OPTIONS, DeliveryOptions
from ..types import Message

__all__ = [
    "Broker",
    "DeadLetter",
    "Delivery",
    "DirectDelivery",
    "Envelope",
    "LocalPut",
    "Settlement",
    "SettlementRef",
]


@dataclass(slots=True)
class Envelope:
    """One message on its way into a queue.

    ``body`` is the encoded CloudEvent (see :mod:`..envelope`). Engines that keep messages in
    process (``needs_bytes = False``) may be handed ``message``/``options`` instead of
    ``body``; engines that persist always get ``body``.
    """

    queue: str
    message_id: str
    priority: int
    body: bytes | None = None
    message: Message | None = None
    options: DeliveryOptions = DEFAULT_OPTIONS
    available_at: float = 0.0
    expires_at: float | None = None
    dedup_key: str | None = None


@dataclass(slots=True)
class Delivery:
    """A message handed out under a lock. ``attempts`` counts this delivery too."""

    queue: str
    message_id: str
    token: str
    attempts: int
    priority: int
    enqueued_at: float
    expires_at: float | None
    body: bytes | None
    message: Message | None
    options: DeliveryOptions
    last_error: str | None = None


@dataclass(slots=True)
class DeadLetter:
    """A message in a queue's dead-letter queue, with why it is there."""

    queue: str
    message_id: str
    priority: int
    body: bytes | None
    message: Message | None
    options: DeliveryOptions
    reason: str
    error: str | None
    attempts: int
    enqueued_at: float
    dead_lettered_at: float


@dataclass(slots=True)
class Settlement:
    """Which delivery to settle: the message id and the lock token it was handed out with."""

    message_id: str
    token: str


class SettlementRef(Protocol):
    """Anything naming a delivery to settle: a :class:`Settlement` or the :class:`Delivery`
    itself (so settling needs no extra object per message)."""

    @property
    def message_id(self) -> str:
        """The message id."""
        ...

    @property
    def token(self) -> str:
        """The lock token the message was handed out with."""
        ...


@runtime_checkable
class Broker(Protocol):
    """What an engine provides. All methods are coroutines except the attribute."""

    #: True when envelopes must carry ``body`` bytes (the engine persists or ships them).
    needs_bytes: bool

    async def send(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_depth: int | None = None,
        dedup_window: float = 0.0,
    ) -> list[bool]:
        """Enqueue the envelopes; per envelope True, or False for a duplicate.

        Atomic where the engine has transactions (memory, sqlite: all or none). On NATS the
        checks run first and the publishes follow, so a failure part-way can leave some
        enqueued (documented in ``brokers/nats/publish.py``).

        An envelope whose ``dedup_key`` was sent within ``dedup_window`` seconds is not
        enqueued (False). Raises ``QueueFullError`` (nothing enqueued) when a queue would go
        over ``max_depth``, and ``DuplicateMessageError`` when a message id is already live.
        """
        ...

    async def receive(self, queue: str, max_messages: int, lock_seconds: float) -> list[Delivery]:
        """Lock and return up to ``max_messages`` available messages: priority, then FIFO."""
        ...

    async def ack(
        self,
        queue: str,
        settlements: Sequence[SettlementRef],
        *,
        processed_key: str | None = None,
        processed_ttl: float = 0.0,
        outbox: Sequence[Envelope] = (),
    ) -> list[bool]:
        """Remove settled messages; per settlement True, or False when the lock was lost.

        With ``processed_key`` the key is recorded (for ``processed_ttl`` seconds) and the
        ``outbox`` envelopes enqueued in the same transaction as the ack.
        """
        ...

    async def release(
        self, queue: str, settlement: SettlementRef, *, delay: float = 0.0, error: str | None = None
    ) -> bool:
        """Unlock a message so it is delivered again after ``delay`` seconds (nack)."""
        ...

    async def renew(
        self, queue: str, settlements: Sequence[SettlementRef], lock_seconds: float
    ) -> list[bool]:
        """Extend the locks of messages still being handled."""
        ...

    async def dead_letter(
        self, queue: str, settlement: SettlementRef, *, reason: str, error: str | None = None
    ) -> bool:
        """Move a locked message to the queue's dead-letter queue with a reason."""
        ...

    async def put_dead_letter(
        self, envelope: Envelope, *, reason: str, error: str | None = None, attempts: int = 0
    ) -> bool:
        """Store ``envelope`` straight in its queue's dead-letter queue, with a reason, without
        it ever being deliverable (a message that failed before it reached a queue: a network
        send that gave up). False when a dead letter of that id is already there."""
        ...

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters, oldest first."""
        ...

    async def resubmit(self, queue: str, message_id: str) -> bool:
        """Move a dead letter back into its queue, attempts reset, available now."""
        ...

    async def purge_dead_letters(self, queue: str) -> int:
        """Delete the queue's dead letters; return how many."""
        ...

    async def depth(self, queue: str) -> int:
        """Messages in the queue (available, delayed or locked), dead letters excluded."""
        ...

    async def dead_letter_depth(self, queue: str) -> int:
        """Messages in the queue's dead-letter queue."""
        ...

    async def queues(self) -> list[str]:
        """Names of queues that hold messages or dead letters."""
        ...

    async def delete_queue(self, queue: str) -> None:
        """Remove a queue with its messages and dead letters."""
        ...

    async def is_processed(self, key: str) -> bool:
        """Whether an exactly-once key was recorded by ``ack`` and has not expired."""
        ...

    async def bind(self, topic: str, queue: str) -> None:
        """Subscribe ``queue`` to ``topic`` (durable): fan-out publishes reach it."""
        ...

    async def unbind(self, topic: str, queue: str) -> None:
        """Remove a binding."""
        ...

    async def bindings(self, topic: str) -> list[str]:
        """Queues bound to ``topic``."""
        ...

    async def wait(self, queue: str, timeout: float | None) -> None:
        """Return when something may be receivable from ``queue``: a send or release to it from any
        process sharing the engine, a due time the engine knows (a delayed message or a release
        backoff coming due, a lock expiring), the engine closing, or after ``timeout`` seconds
        when it is not None. With None there is no periodic wake-up apart from the engine's own
        slow safety poll (seconds, not per agent: one structure per engine).

        A wake-up may be spurious (a receive after it may find nothing); a missed one is a bug.
        """
        ...

    async def prepare(self, queue: str) -> None:
        """Set up what consuming ``queue`` needs (server-side consumers, subscriptions, watches) so
        that the first receive finds it ready. Idempotent; cheap when already prepared."""
        ...

    async def close(self) -> None:
        """Release every resource; further calls raise ``BrokerClosedError``."""
        ...


# ---------------------------------------------------------------- optional capabilities
# An engine declares an optional feature by implementing one of these small Protocols. The
# bus checks each once, when it starts (``isinstance(broker, LocalPut)``), never per call.


@runtime_checkable
class LocalPut(Protocol):
    """An engine that keeps messages in this process (memory) and takes a plain message
    object without an envelope: the bus's publish path uses it for a plain message (one
    recipient, no options, TTL, delay or dedup)."""

    def put_local(self, queue: str, message: Message, max_depth: int | None) -> None:
        """Enqueue ``message`` at once (no await): ``QueueFullError`` over ``max_depth``,
        ``DuplicateMessageError`` when its id is live in ``queue``."""
        ...


@runtime_checkable
class DirectDelivery(Protocol):
    """An engine that can hand an envelope to a listener or consumer that is live right now,
    storing nothing (NATS: core request/reply). The bus uses it for ``request()`` and its
    responses; whenever a method answers False the caller falls back to ``send``."""

    async def listen_direct(self, queue: str, handler: Callable[[bytes], Awaitable[bool]]) -> None:
        """Take envelopes sent to ``queue`` with :meth:`send_direct` while this process runs;
        ``handler(body)`` says whether it took the message."""
        ...

    async def send_direct(
        self, env: Envelope, *, reply_for: str | None = None, timeout: float = 2.0
    ) -> bool:
        """Hand ``env`` to a live :meth:`listen_direct` listener of its queue; ``reply_for``
        is the id of the handed-off request ``env`` answers. True only when it was taken."""
        ...

    async def hand_off(
        self, env: Envelope, *, reply_queue: str | None = None, wait: float = 1.0
    ) -> bool:
        """Offer a request to a consumer of its queue that is live, idle and caught up right
        now; a quick consumer's answer comes back to ``reply_queue``'s listener on the same
        trip. True when a consumer took it."""
        ...
