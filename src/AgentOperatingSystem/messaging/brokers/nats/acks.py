"""Acks: pipelined double acks, confirmed later.

The acks of one consumer are sent together and the last asks for a confirmation (the server
handles a consumer's acks in order). ``ack`` returns once they are sent (True: the lock was
still held); the confirmations are collected before ``depth``/``queues``/``delete_queue``
answer and at ``close``, and acks that stay unconfirmed are sent again (bounded; what the
server never got is redelivered). ``release``, ``dead_letter`` and a lock handed back use a
confirmed ack (:meth:`Acks.ack_sync`), so a receive right after sees its effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass

from nats.aio.msg import Msg

from ...errors import BrokerUnavailableError
from .connection import REQUEST_TIMEOUT, RETRY_SECONDS, Connection

__all__ = ["Acks", "PendingAck"]


@dataclass(slots=True)
class PendingAck:
    """An ack sent with a reply subject whose confirmation has not arrived yet."""

    msgs: list[Msg]  # acks of one consumer, in order; the last one carries the reply
    payload: bytes
    future: asyncio.Future[None]
    sent_at: float


class Acks:
    """The acks sent and not yet confirmed (``pending``, keyed ``A<n>`` on the inbox)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.pending: dict[str, PendingAck] = {}
        self._ids = itertools.count()

    async def ack_sync(
        self, msg: Msg, payload: bytes = b"+ACK", *, budget: float = RETRY_SECONDS / 2
    ) -> None:
        """Send one ack (or nak, term) and wait for the server to confirm it."""
        reply = msg.reply
        nc = self._conn.nc

        async def once() -> None:
            await nc.request(reply, payload, timeout=min(REQUEST_TIMEOUT, budget))

        await self._conn.retrying("ack", once, budget=budget)

    async def send(self, msgs: list[Msg], payload: bytes = b"+ACK") -> None:
        """Ack messages of one consumer; only the last asks for a confirmation (the server
        handles a consumer's acks in order), which is collected later (pipelined)."""
        key = f"A{next(self._ids)}"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = self.pending[key] = PendingAck(msgs, payload, future, 0.0)
        await self._publish(key, pending)

    async def _publish(self, key: str, pending: PendingAck) -> None:
        pending.sent_at = time.monotonic()
        conn = self._conn
        publish = conn.nc.publish
        for msg in pending.msgs[:-1]:
            await publish(msg.reply, pending.payload)
        await publish(pending.msgs[-1].reply, pending.payload, reply=conn.inbox_prefix + key)

    async def settle(self, *, stale_only: bool = False) -> None:
        """Wait until the server confirmed the acks sent so far (all, or only those pending
        longer than ``REQUEST_TIMEOUT``); send unconfirmed ones again (same confirmation
        subject) until confirmed or ``RETRY_SECONDS`` pass."""
        if not self.pending:
            return
        now = time.monotonic()
        if stale_only:
            waiting = {k: p for k, p in self.pending.items() if now - p.sent_at > REQUEST_TIMEOUT}
            resend = True
        else:
            waiting, resend = dict(self.pending), False
        deadline = now + RETRY_SECONDS
        while waiting:
            if resend:
                self._conn.check_open()
                with self._conn.errors("ack"):
                    for key, pending in waiting.items():
                        await self._publish(key, pending)
            await asyncio.wait([p.future for p in waiting.values()], timeout=REQUEST_TIMEOUT)
            waiting = {k: p for k, p in waiting.items() if not p.future.done()}
            if waiting and time.monotonic() > deadline:
                for key in waiting:
                    self.pending.pop(key, None)  # the server redelivers what it did not get
                raise BrokerUnavailableError("NATS ack: no confirmation from the server")
            resend = True

    async def resend(self) -> None:
        """After a reconnect: send every unconfirmed ack again."""
        for key, pending in list(self.pending.items()):
            with contextlib.suppress(Exception):
                await self._publish(key, pending)

    async def drain(self, timeout: float) -> None:
        """At close: let the last acks be confirmed (bounded: the server may be gone)."""
        if self.pending:
            with contextlib.suppress(Exception):
                await asyncio.wait([p.future for p in self.pending.values()], timeout=timeout)
