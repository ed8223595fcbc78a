"""The locks this engine holds: deliveries handed out and not settled yet.

A lock is the consumer's ``ack_wait`` on the server (real time). The engine also keeps each
lock's deadline on its :class:`~...clock.Clock`: a settlement after that deadline returns
False (lock lost), and ``receive`` hands a lock that expired on the clock back to the server
at once, so a :class:`~...clock.ManualClock` drives lock expiry in tests.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from nats.aio.msg import Msg

from ...clock import Clock
from ...errors import BrokerUnavailableError
from ..base import SettlementRef
from .acks import Acks
from .pullers import Puller

__all__ = ["Held", "Locks"]


@dataclass(slots=True)
class Held:
    """A delivery this broker handed out and has not settled."""

    msg: Msg
    queue: str
    message_id: str
    puller: Puller
    seq: int
    deadline: float  # on the engine clock
    real_deadline: float  # time.monotonic(): when the server's ack_wait runs out
    has_meta: bool


class Locks:
    """Held deliveries by token (``<stream seq>.<delivery count>``)."""

    def __init__(self, clock: Clock, acks: Acks) -> None:
        self._clock = clock
        self._acks = acks
        self.held: dict[str, Held] = {}

    def take(self, queue: str, settlement: SettlementRef, *, pop: bool = True) -> Held | None:
        """The lock ``settlement`` names if it is still held (removed unless ``pop=False``);
        None when it is unknown, of another queue, or past its deadline."""
        held = self.held.get(settlement.token)
        if held is None or held.queue != queue or held.message_id != settlement.message_id:
            return None
        if self._clock.now() >= held.deadline or time.monotonic() >= held.real_deadline:
            self.held.pop(settlement.token, None)
            return None
        if pop:
            del self.held[settlement.token]
        return held

    async def expire(self) -> None:
        """Forget locks past their clock deadline; hand back those the server still holds."""
        now = self._clock.now()
        mono = time.monotonic()
        for token, held in list(self.held.items()):
            if now >= held.deadline or mono >= held.real_deadline:
                del self.held[token]
                held.puller.may_have()
                if mono < held.real_deadline - 0.05:
                    try:  # confirmed, so a fetch right after sees it; else the server's
                        await self._acks.ack_sync(held.msg, b"-NAK", budget=2.0)  # timer will
                    except BrokerUnavailableError:
                        pass

    def next_deadline(self, queue: str, wake: float) -> float:
        """The earlier of ``wake`` and the first server deadline of ``queue``'s locks."""
        for held in self.held.values():
            if held.queue == queue:
                wake = min(wake, held.real_deadline)
        return wake

    def drop_queue(self, queue: str) -> None:
        """Forget the locks of a deleted queue."""
        for token, held in list(self.held.items()):
            if held.queue == queue:
                del self.held[token]

    async def hand_back(self) -> None:
        """At close: nak every lock the server still holds, so others get them at once."""
        held = list(self.held.values())
        self.held.clear()  # in place: the receiver holds this dict
        now = time.monotonic()
        for h in held:
            if now < h.real_deadline:
                with contextlib.suppress(Exception):
                    await h.msg.nak()
