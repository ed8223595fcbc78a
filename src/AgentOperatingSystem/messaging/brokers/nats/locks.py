"""The locks this engine holds: deliveries handed out and not settled yet.

A lock is the consumer's ``ack_wait`` on the server (real time). The engine also keeps each
lock's deadline on its :class:`~...clock.Clock`: a settlement after that deadline returns
False (lock lost), and ``receive`` hands a lock that expired on the clock back to the server
at once, so a :class:`~...clock.ManualClock` drives lock expiry in tests.

Locks are also indexed by queue (``wait`` wakes at the first server deadline of the queue's
locks, and the safety poll discounts the messages this process holds), and the earliest
deadline of all is kept (a conservative bound), so ``expire`` costs nothing until one may
have passed.
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
    """Held deliveries by token (``<stream seq>.<delivery count>``), and by queue."""

    def __init__(self, clock: Clock, acks: Acks) -> None:
        self._clock = clock
        self._acks = acks
        self.held: dict[str, Held] = {}
        #: queue -> its held deliveries, by token
        self.by_queue: dict[str, dict[str, Held]] = {}
        # no deadline of a held lock is earlier than these (engine clock; monotonic)
        self._first_deadline = float("inf")
        self._first_real = float("inf")

    def hold(self, token: str, held: Held) -> None:
        """Record a delivery handed out under ``token``."""
        self.held[token] = held
        of_queue = self.by_queue.get(held.queue)
        if of_queue is None:
            of_queue = self.by_queue[held.queue] = {}
        of_queue[token] = held
        if held.deadline < self._first_deadline:
            self._first_deadline = held.deadline
        if held.real_deadline < self._first_real:
            self._first_real = held.real_deadline

    def _forget(self, token: str, held: Held) -> None:
        self.held.pop(token, None)
        of_queue = self.by_queue.get(held.queue)
        if of_queue is not None:
            of_queue.pop(token, None)
            if not of_queue:
                del self.by_queue[held.queue]

    def take(self, queue: str, settlement: SettlementRef, *, pop: bool = True) -> Held | None:
        """The lock ``settlement`` names if it is still held (removed unless ``pop=False``);
        None when it is unknown, of another queue, or past its deadline."""
        held = self.held.get(settlement.token)
        if held is None or held.queue != queue or held.message_id != settlement.message_id:
            return None
        if self._clock.now() >= held.deadline or time.monotonic() >= held.real_deadline:
            self._forget(settlement.token, held)
            return None
        if pop:
            self._forget(settlement.token, held)
        return held

    async def expire(self) -> None:
        """Forget locks past their clock deadline; hand back those the server still holds."""
        now = self._clock.now()
        mono = time.monotonic()
        if now < self._first_deadline and mono < self._first_real:
            return
        first, first_real = float("inf"), float("inf")
        for token, held in list(self.held.items()):
            if now >= held.deadline or mono >= held.real_deadline:
                self._forget(token, held)
                held.puller.may_have()
                if mono < held.real_deadline - 0.05:
                    try:  # confirmed, so a fetch right after sees it; else the server's
                        await self._acks.ack_sync(held.msg, b"-NAK", budget=2.0)  # timer will
                    except BrokerUnavailableError:
                        pass
            else:
                first = min(first, held.deadline)
                first_real = min(first_real, held.real_deadline)
        self._first_deadline, self._first_real = first, first_real

    def earliest(self, queue: str) -> float:
        """The first server deadline (monotonic) of ``queue``'s locks; inf when none."""
        of_queue = self.by_queue.get(queue)
        if not of_queue:
            return float("inf")
        return min(h.real_deadline for h in of_queue.values())

    def count(self, queue: str) -> int:
        """How many deliveries of ``queue`` this process holds."""
        return len(self.by_queue.get(queue, ()))

    def drop_queue(self, queue: str) -> None:
        """Forget the locks of a deleted queue."""
        for token, held in list(self.by_queue.get(queue, {}).items()):
            self._forget(token, held)

    def clear(self) -> None:
        """Forget every lock (the namespace was dropped)."""
        self.held.clear()
        self.by_queue.clear()

    async def hand_back(self) -> None:
        """At close: nak every lock the server still holds, so others get them at once."""
        held = list(self.held.values())
        self.clear()
        now = time.monotonic()
        for h in held:
            if now < h.real_deadline:
                with contextlib.suppress(Exception):
                    await h.msg.nak()
