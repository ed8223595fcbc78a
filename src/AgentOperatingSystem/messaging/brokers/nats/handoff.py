"""Handoffs taken by this process's consumers: a request handed straight to a consumer that
is live right now, nothing stored (the sender's side is :meth:`.direct.Direct.hand_off`).

A consumer takes a handoff only when its last receive found the queue empty and it received
or waited within ``HANDOFF_ACTIVE_SECONDS`` on the engine's clock (so a request does not
overtake messages already queued, and a busy or gone consumer declines); otherwise the sender
publishes the request the durable way. A handed-off message that fails goes to the durable
queue (``release``, with its attempt counted in the ``Aos-Prior`` header and its error in
``Aos-Error``), to the dead-letter stream (``dead_letter``), or back to the queue at
``close`` or when its consumer has not picked it up within ``grace`` seconds (engine clock).
Its one window of loss: a consumer process that dies while it holds a handed-off request;
the requester, who is waiting, gets ``RequestTimeoutError``.

A remote sender waits for an answer: the response itself when the handler was quick
(:meth:`Handoffs.answer`), else "taken" (``1``) within ``HANDOFF_CONFIRM_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from dataclasses import dataclass

from nats.aio.msg import Msg

from ...clock import Clock
from ...errors import MessagingError
from ...policy import DEFAULT_OPTIONS
from ..base import Delivery, Envelope, SettlementRef
from .connection import Connection
from .depth import Depths
from .headers import H_ERROR, H_INFO, H_MSG_ID, H_PRIOR, H_WAIT, Info, fnum, hq
from .subjects import clamp_priority, queue_token
from .watch import Watches

__all__ = [
    "HANDOFF_ACTIVE_SECONDS",
    "HANDOFF_BACKLOG",
    "HANDOFF_CONFIRM_SECONDS",
    "HANDOFF_GRACE_SECONDS",
    "HANDOFF_TIMEOUT",
    "Handoff",
    "Handoffs",
]

_log = logging.getLogger(__name__)

#: A consumer takes handoffs for its queue only if it received from it or waited on it this
#: recently (seconds, engine clock): one stuck in a long handler declines.
HANDOFF_ACTIVE_SECONDS = 0.5
#: Handoffs a consumer has not picked up after this long go to the durable queue.
HANDOFF_GRACE_SECONDS = 1.0
#: At most this many handoffs wait for one queue's consumer; more are declined.
HANDOFF_BACKLOG = 8
#: How long ``hand_off`` waits for a remote consumer to say whether it took the message.
HANDOFF_TIMEOUT = 1.0
#: A consumer that took a remote handoff answers within this long (at most half the
#: sender's wait): with the response when the handler was that quick, else with "taken".
HANDOFF_CONFIRM_SECONDS = 0.2


@dataclass(slots=True)
class Handoff:
    """A message handed to this process's consumer of ``queue``."""

    queue: str
    body: bytes
    info: Info
    received: float  # clock.monotonic()
    token: str = ""
    #: where the sender waits for the answer (remote handoffs): the response itself, or
    #: ``1`` ("taken; the answer comes the usual way") once ``confirm`` fires
    reply: str | None = None
    confirm: asyncio.TimerHandle | None = None


class Handoffs:
    """The handoffs this process's consumers took: waiting, delivered, and answered."""

    def __init__(self, conn: Connection, clock: Clock, watches: Watches, depths: Depths) -> None:
        self._conn = conn
        self._clock = clock
        self._watches = watches
        self._depths = depths
        #: queue -> handoffs taken and not received yet
        self.waiting: dict[str, deque[Handoff]] = {}
        #: token -> handoff delivered and not settled yet
        self.handed: dict[str, Handoff] = {}
        #: message id -> handoff whose remote sender still waits for the answer
        self.awaiting: dict[str, Handoff] = {}
        self._confirms: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()
        self._sweeper: asyncio.Task[None] | None = None
        self._sweeping = False
        #: seconds before an unclaimed handoff goes to the durable queue (tests shorten it)
        self.grace = HANDOFF_GRACE_SECONDS
        #: handoffs this broker's consumers took (from this process or others)
        self.taken = 0

    # ------------------------------------------------------------------ taking
    def take(
        self, queue: str, body: bytes, info: Info, reply: str | None = None, wait: float = 0.0
    ) -> bool:
        """Take a handed-off message for this process's consumer of ``queue`` if it is live,
        idle and caught up (see the module docs); wake it."""
        conn = self._conn
        if conn.closing or conn.closed or not info.message_id:
            return False
        watch = self._watches.by_queue.get(queue)
        waiting = self.waiting.get(queue)
        if watch is None or not watch.drained:
            return False
        if waiting is not None and len(waiting) >= HANDOFF_BACKLOG:
            return False
        now = self._clock.monotonic()
        if watch.waiters == 0 and now - watch.active_at > HANDOFF_ACTIVE_SECONDS:
            return False
        if info.available_at > self._clock.now():
            return False
        handoff = Handoff(queue, body, info, now)
        if reply:
            handoff.reply = reply
            self.awaiting[info.message_id] = handoff
            handoff.confirm = asyncio.get_running_loop().call_later(
                min(HANDOFF_CONFIRM_SECONDS, wait / 2), self._confirm_later, handoff
            )
        if waiting is None:
            waiting = self.waiting[queue] = deque()
        waiting.append(handoff)
        watch.event.set()
        self.taken += 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="aos-nats-handoff-sweep"
            )
        return True

    async def on_remote(self, queue: str, msg: Msg) -> None:
        """A handoff offered by another process (core subject ``<ns>.h.<token>``)."""
        headers = msg.headers or {}
        wait = fnum(headers.get(H_WAIT), HANDOFF_TIMEOUT) or HANDOFF_TIMEOUT
        taken = bool(msg.data) and self.take(
            queue, msg.data, Info.decode(headers.get(H_INFO)), msg.reply or None, wait
        )
        if not taken and msg.reply:  # taken: answered within HANDOFF_CONFIRM_SECONDS
            with contextlib.suppress(Exception):
                await self._conn.nc.publish(msg.reply, b"0")

    # ------------------------------------------------------------------ answering
    async def answer(self, reply_for: str, env: Envelope, body: bytes) -> bool:
        """Send the response ``env`` to the sender of handoff ``reply_for`` if it still waits
        on the handoff; True when it was sent."""
        handoff = self.awaiting.pop(reply_for, None)
        if handoff is None:
            return False
        if handoff.confirm is not None:
            handoff.confirm.cancel()
        reply = handoff.reply
        handoff.reply = None
        if reply is None or self._conn.closed:
            return False
        info = Info(clamp_priority(env.priority), 0.0, 0.0, None, env.message_id)
        try:
            await self._conn.nc.publish(reply, body, headers={H_INFO: info.encode()})
            # let the client's flusher write it now, before the caller goes on to settle
            # and receive (the sender is waiting for exactly this)
            await asyncio.sleep(0)
            return True
        except Exception:  # not sent: the sender hears nothing and stores it
            _log.debug("answer to handoff %s not sent", reply_for, exc_info=True)
            return False

    def _confirm_later(self, handoff: Handoff) -> None:
        task = asyncio.get_running_loop().create_task(self.confirm(handoff))
        self._confirms.add(task)
        task.add_done_callback(self._confirms.discard)

    async def confirm(self, handoff: Handoff) -> None:
        """Tell a handoff's sender "taken; the answer comes the usual way" (once)."""
        if handoff.confirm is not None:
            handoff.confirm.cancel()
            handoff.confirm = None
        if self.awaiting.get(handoff.info.message_id) is handoff:
            del self.awaiting[handoff.info.message_id]
        reply, handoff.reply = handoff.reply, None
        if reply is not None and not self._conn.closed:
            with contextlib.suppress(Exception):
                await self._conn.nc.publish(reply, b"1")

    # ------------------------------------------------------------------ delivering
    def delivery(self, handoff: Handoff) -> Delivery:
        """Hand a waiting handoff to its consumer (token ``h<n>``: settled here alone)."""
        token = handoff.token = f"h{next(self._ids)}"
        self.handed[token] = handoff
        info = handoff.info
        return Delivery(
            queue=handoff.queue,
            message_id=info.message_id,
            token=token,
            attempts=1,
            priority=info.priority,
            enqueued_at=info.enqueued_at,
            expires_at=info.expires_at,
            body=handoff.body,
            message=None,
            options=DEFAULT_OPTIONS,
        )

    def find(self, queue: str, settlement: SettlementRef, *, pop: bool = True) -> Handoff | None:
        """The delivered handoff ``settlement`` names (removed unless ``pop=False``)."""
        handoff = self.handed.get(settlement.token)
        if (
            handoff is None
            or handoff.queue != queue
            or handoff.info.message_id != settlement.message_id
        ):
            return None
        if pop:
            del self.handed[settlement.token]
        return handoff

    # ------------------------------------------------------------------ to the queue
    async def requeue(
        self, handoff: Handoff, *, prior: int, delay: float = 0.0, error: str | None = None
    ) -> None:
        """Store a handed-off message in its queue (the durable way), ``prior`` attempts
        already made, available after ``delay`` seconds; then tell its sender, if it still
        waits, that the answer comes the usual way."""
        old = handoff.info
        available = self._clock.now() + delay if delay > 0 else old.available_at
        info = Info(old.priority, old.enqueued_at, available, old.expires_at, old.message_id)
        headers = {
            H_MSG_ID: f"ho:{queue_token(handoff.queue)}:{old.message_id}:{prior}",
            H_INFO: info.encode(),
        }
        if prior:
            headers[H_PRIOR] = str(prior)
        if error is not None:
            headers[H_ERROR] = hq(error)
        subject = self._conn.subjects.queue(handoff.queue, old.priority)
        await self._conn.publish(subject, handoff.body, headers)
        self._depths.count_sent(handoff.queue, 1)
        if delay > 0:
            self._watches.schedule_wake(handoff.queue, delay, old.priority)
        else:
            await self._watches.notify(handoff.queue, old.priority)
        await self.confirm(handoff)

    async def _sweep_loop(self) -> None:
        """Every ``grace`` seconds (engine clock) while handoffs wait: sweep them."""
        try:
            while not self._conn.closing:
                await self._clock.sleep(self.grace)
                if self._conn.closing:
                    return
                self._sweeping = True
                try:
                    left = await self._sweep()
                finally:
                    self._sweeping = False
                if not left:
                    return
        finally:
            self._sweeper = None

    async def _sweep(self) -> bool:
        """Send handoffs no consumer picked up within ``grace`` to the durable queue; return
        whether any still wait."""
        cutoff = self._clock.monotonic() - self.grace
        for waiting in list(self.waiting.values()):
            while waiting and waiting[0].received <= cutoff:
                handoff = waiting.popleft()
                try:
                    await self.requeue(handoff, prior=0)
                except MessagingError:
                    waiting.appendleft(handoff)  # kept; tried again later
                    _log.warning("could not queue an unclaimed handoff; retrying later")
                    break
        return any(self.waiting.values())

    async def close(self) -> None:
        """At close (no handoff is taken any more): stop sweeping, and put every handoff taken
        and not settled back in the durable queue; tell the senders still waiting."""
        sweeper = self._sweeper
        if sweeper is not None:
            if not self._sweeping:  # asleep: stop it; sweeping: let it finish
                sweeper.cancel()
            await asyncio.wait([sweeper])
            if not sweeper.cancelled():
                sweeper.exception()  # retrieved: close goes on whatever the sweep met
            self._sweeper = None
        pending = list(self.handed.values())
        self.handed.clear()
        for waiting in self.waiting.values():
            pending += waiting
            waiting.clear()
        for handoff in pending:
            try:
                await self.requeue(handoff, prior=0)
            except Exception:
                _log.exception(
                    "could not queue handed-off message %s of %s at close",
                    handoff.info.message_id,
                    handoff.queue,
                )
        for handoff in list(self.awaiting.values()):  # settled, or not stored just now
            await self.confirm(handoff)
        if self._confirms:
            await asyncio.gather(*self._confirms, return_exceptions=True)
