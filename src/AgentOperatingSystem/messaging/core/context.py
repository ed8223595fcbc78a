"""The delivery a handler is running for, kept in a context variable.

A subscription's consumer sets it around each handler call, so what the handler publishes
through the same bus can carry the hop count and causation id of the message it answers,
and, for an ``exactly_once`` delivery, go to the outbox that commits with the ack. The
publish path passes ``current.message`` to access control as the message being answered.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from ..brokers.base import Envelope
from ..policy import DeliveryOptions
from ..types import Message

__all__ = ["Current", "current"]


@dataclass(slots=True)
class Current:
    """One running delivery: which bus handles it (``owner``, the bus's shared state: an
    outbox only takes that bus's publishes), the message, its delivery options and, for an
    exactly-once delivery, the outbox of envelopes to enqueue with the ack."""

    owner: object
    message: Message
    options: DeliveryOptions
    outbox: list[Envelope] | None


current: contextvars.ContextVar[Current | None] = contextvars.ContextVar(
    "aos_current_delivery", default=None
)
"""The delivery the running handler was called for (None outside a handler)."""
