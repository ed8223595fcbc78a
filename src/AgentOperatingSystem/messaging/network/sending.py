"""What a send takes and gives back: a :class:`Message` built from a send's arguments, the
:class:`SendReceipt` of a delivered message, the :class:`ResubmitReport` of a resubmission,
and the reason a failed send is dead-lettered with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from ..core.context import current
from ..errors import AgentUnreachableError, CircuitOpenError, InvalidMessageError
from ..policy import DEFAULT_OPTIONS, DeliveryOptions
from ..types import Message, MessagePriority, MessageType

__all__ = [
    "FailureHook",
    "ResubmitReport",
    "SendReceipt",
    "as_message",
    "failure_reason",
    "send_options",
]


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """What a send did: ``address`` is the node that accepted the message (``None`` when the
    recipient is hosted on this node and the message went straight to the local bus);
    ``duplicate`` when the receiver had it already (a retry or a resubmission)."""

    message_id: str
    recipient_id: str
    address: str | None
    attempts: int = 1
    duplicate: bool = False

    @property
    def local(self) -> bool:
        """True when the message was delivered on this node's bus."""
        return self.address is None


@dataclass(slots=True)
class ResubmitReport:
    """Outcome of :meth:`NetworkProtocol.resubmit_failed`, per message: ids delivered, ids
    that failed again (back in the dead-letter queue), and why each of those failed
    (``reasons[id]``: ``unreachable``, ``circuit_open``, ``rejected``, ``unknown_agent``,
    ``expired`` or ``undecodable``)."""

    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


FailureHook = Callable[[Message, DeliveryOptions, str, BaseException], Awaitable[None]]
"""``hook(message, options, reason, error)``: called when a delivery failed for good."""


def as_message(
    message: Message | Mapping[str, Any],
    *,
    sender_id: str | None,
    recipient_id: str | None,
    default_sender: str,
    message_type: MessageType | str | None = None,
    priority: MessagePriority | int | str | None = None,
    correlation_id: str | None = None,
    ttl: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Message:
    """A :class:`Message` from a Message or a dict of content, with the addressing given."""
    if isinstance(message, Message):
        changes: dict[str, Any] = {}
        if sender_id is not None and sender_id != message.sender_id:
            changes["sender_id"] = sender_id
        if recipient_id is not None and recipient_id != message.recipient_id:
            changes["recipient_id"] = recipient_id
        for name, value in (
            ("message_type", message_type),
            ("priority", priority),
            ("correlation_id", correlation_id),
            ("ttl", ttl),
        ):
            if value is not None:
                changes[name] = value
        if metadata:
            changes["metadata"] = {**message.metadata, **metadata}
        return message.copy(**changes) if changes else message
    if isinstance(message, Mapping):
        return Message(
            message_type=MessageType.coerce(
                message_type if message_type is not None else MessageType.NOTIFICATION
            ),
            sender_id=sender_id or default_sender,
            recipient_id=recipient_id,
            content=dict(message),
            priority=MessagePriority.coerce(
                priority if priority is not None else MessagePriority.NORMAL
            ),
            metadata=dict(metadata or {}),
            correlation_id=correlation_id,
            ttl=ttl,
        )
    raise InvalidMessageError(
        f"message must be a Message or a dict of content, not {type(message).__name__}"
    )


def failure_reason(exc: BaseException) -> str:
    """The dead-letter reason of a failed send: ``circuit_open`` (not tried: the node's
    circuit is open), ``unreachable`` (no answer after the retries) or ``rejected``."""
    if isinstance(exc, AgentUnreachableError):
        return "circuit_open" if isinstance(exc.__cause__, CircuitOpenError) else "unreachable"
    return "rejected"


def send_options() -> DeliveryOptions:
    """The delivery options of a send: made inside a handler, one hop more than the message
    it handles, which is its cause (so the loop guard counts sends between nodes too);
    ``DEFAULT_OPTIONS`` outside one."""
    running = current.get()
    if running is None:
        return DEFAULT_OPTIONS
    return DeliveryOptions(hops=running.options.hops + 1, causation_id=running.message.message_id)
