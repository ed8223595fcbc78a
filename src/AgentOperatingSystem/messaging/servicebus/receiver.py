"""``async for`` over a subscription: :class:`SubscriptionReceiver`, which
:meth:`~.manager.ServiceBusManager.receive_from_subscription` returns."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from ..types import Message
from .backend import ServiceBusBackend

__all__ = ["ReceiverSource", "SubscriptionReceiver"]


class ReceiverSource(Protocol):
    """What a receiver needs of its :class:`~.manager.ServiceBusManager`: whether it is
    closed, and its started backend."""

    @property
    def closed(self) -> bool:
        """True after the manager was closed."""
        ...

    async def _ready(self) -> ServiceBusBackend:
        """The backend, started on first use."""
        ...


@dataclass(eq=False)
class SubscriptionReceiver(AbstractAsyncContextManager["SubscriptionReceiver", None]):
    """``async for`` over a subscription's messages (peek-lock), one at a time.

    Built by the manager with its arguments, in the order of the fields below; ``received``
    counts the messages yielded so far. Ends after ``max_wait_time`` seconds without a
    message (when given), after ``max_messages`` messages (when given), when the manager
    closes, or when closed (``aclose()``, or leaving ``async with``; entering returns the
    receiver, as the base class does). Each message must be settled with the manager's
    ``complete_message``/``abandon_message``/``dead_letter_message``.
    """

    _manager: ReceiverSource = field(repr=False)
    topic_name: str
    subscription_name: str
    max_wait_time: float | None
    max_messages: int | None
    received: int = field(default=0, init=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def __aiter__(self) -> SubscriptionReceiver:
        return self

    async def __anext__(self) -> Message:
        if self._closed or self._manager.closed:
            raise StopAsyncIteration
        if self.max_messages is not None and self.received >= self.max_messages:
            self._closed = True
            raise StopAsyncIteration
        backend = await self._manager._ready()
        messages = await backend.receive(
            self.topic_name, self.subscription_name, 1, self.max_wait_time
        )
        if not messages:
            self._closed = True
            raise StopAsyncIteration
        self.received += 1
        return messages[0]

    async def aclose(self) -> None:
        """Stop iterating."""
        self._closed = True

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
