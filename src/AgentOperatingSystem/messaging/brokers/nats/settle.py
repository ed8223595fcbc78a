"""Settling deliveries: ack, release (nack with a delay), renew and dead-letter.

* **ack** is a pipelined double ack (:mod:`.acks`). ``ack(processed_key=..., outbox=...)``
  runs in this order: publish the outbox (each with ``Nats-Msg-Id`` derived from the key and
  its index, so a retry is deduplicated by the server), record the key, then ack. It is not
  one atomic transaction: a crash between the steps redelivers the message, and the server's
  duplicate window (``dedup_window``) keeps the outbox from being enqueued twice within it.
* **release** is a confirmed ``nak(delay)``: the delay runs on the server's real clock.
  ``error`` is kept in the meta bucket and comes back as ``Delivery.last_error``.
* **renew** sends ``+WPI`` (``in_progress``), which restarts the lock for the consumer's
  ``ack_wait`` (so processes should agree on one ``lock_seconds``).
* **dead_letter** copies the message to its queue's dead-letter queue (:mod:`.dead_letters`)
  with why, then terminates it in the queue (``+TERM``).

A token ``h<n>`` names a handoff (:mod:`.handoff`), settled in this process alone.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable, Sequence

from nats.aio.msg import Msg

from ...clock import Clock
from ...errors import InvalidMessageError
from ..base import Envelope, SettlementRef
from .acks import Acks
from .connection import REQUEST_TIMEOUT, Connection
from .dead_letters import DeadLetters
from .handoff import Handoff, Handoffs
from .headers import H_INFO, attempts
from .locks import Held, Locks
from .meta import Meta, MetaStore
from .processed import ProcessedKeys
from .publish import Publisher
from .subjects import hash_text
from .watch import Watches

__all__ = ["Settler"]


class Settler:
    """``ack``, ``release``, ``renew`` and ``dead_letter`` for the facade."""

    def __init__(
        self,
        conn: Connection,
        clock: Clock,
        locks: Locks,
        meta: MetaStore,
        acks: Acks,
        handoffs: Handoffs,
        watches: Watches,
        publisher: Publisher,
        processed: ProcessedKeys,
        store: Callable[[Sequence[Envelope]], Awaitable[list[bool]]],
        dlq: DeadLetters,
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._locks = locks
        self._meta = meta
        self._acks = acks
        self._handoffs = handoffs
        self._watches = watches
        self._publisher = publisher
        self._processed = processed
        self._store = store  # the broker's send, for an outbox without a processed key
        self._dlq = dlq

    async def ack(
        self,
        queue: str,
        settlements: Sequence[SettlementRef],
        *,
        processed_key: str | None = None,
        processed_ttl: float = 0.0,
        outbox: Sequence[Envelope] = (),
    ) -> list[bool]:
        """Remove settled messages (double ack); outbox and processed key first (not atomic)."""
        self._conn.check_open()
        find, take = self._handoffs.find, self._locks.take
        helds: list[Held | Handoff | None] = [
            find(queue, s) if s.token[:1] == "h" else take(queue, s) for s in settlements
        ]
        live = [h for h in helds if isinstance(h, Held)]
        if not live and all(h is None for h in helds):
            return [False] * len(helds)  # every lock is lost: record and enqueue nothing
        if processed_key is not None:
            await self._outbox_and_key(processed_key, processed_ttl, outbox)
        elif outbox:
            await self._store(list(outbox))
        groups: dict[str, list[Msg]] = {}
        for h in live:
            groups.setdefault(h.puller.name, []).append(h.msg)
        with self._conn.errors("ack"):
            for msgs in groups.values():
                await self._acks.send(msgs)
        await self._acks.settle(stale_only=True)
        cached = self._meta.cache
        for h in live:
            if h.has_meta or h.seq in cached:
                await self._meta.drop(h.seq)
        return [h is not None for h in helds]

    async def _outbox_and_key(self, key: str, ttl: float, outbox: Sequence[Envelope]) -> None:
        """Exactly-once: publish the outbox under ids derived from ``key``, then record it."""
        if outbox:
            prefix = f"ob:{hash_text(key)}"
            for env in outbox:
                if env.body is None:
                    raise InvalidMessageError("the NATS engine needs envelopes with body bytes")
            results = await self._publisher.publish_envelopes(
                list(outbox), [f"{prefix}:{i}" for i in range(len(outbox))], duplicate_ok=True
            )
            for outcome in results:
                if isinstance(outcome, BaseException):
                    raise outcome
        await self._processed.record(key, ttl)

    async def release(
        self, queue: str, settlement: SettlementRef, *, delay: float = 0.0, error: str | None = None
    ) -> bool:
        """``nak(delay)``: delivered again after ``delay`` seconds; ``error`` is kept."""
        self._conn.check_open()
        if settlement.token[:1] == "h":
            handoff = self._handoffs.find(queue, settlement)
            if handoff is None:
                return False
            await self._handoffs.requeue(handoff, prior=1, delay=delay, error=error)
            return True
        held = self._locks.take(queue, settlement)
        if held is None:
            return False
        if error is not None or held.has_meta:
            meta = (await self._meta.get(held.seq)) or Meta()
            meta.error = error
            await self._meta.save(held.seq, meta)
        payload = b"-NAK"
        if delay > 0:
            payload += b' {"delay": %d}' % int(delay * 1e9)
        await self._acks.ack_sync(held.msg, payload)  # confirmed: a receive right after sees it
        if delay > 0:
            self._watches.schedule_wake(queue, delay, held.puller.priority)
        else:
            await self._watches.notify(queue, held.puller.priority)
        return True

    async def renew(
        self, queue: str, settlements: Sequence[SettlementRef], lock_seconds: float
    ) -> list[bool]:
        """Restart locks with ``+WPI``; the server extends by the consumer's ``ack_wait``."""
        conn = self._conn
        conn.check_open()
        out: list[bool] = []
        for s in settlements:
            if s.token[:1] == "h":  # held by this process alone: nothing to extend
                out.append(self._handoffs.find(queue, s, pop=False) is not None)
                continue
            held = self._locks.take(queue, s, pop=False)
            if held is None:
                out.append(False)
                continue
            with conn.errors("renew"):
                await held.msg.in_progress()
            held.deadline = self._clock.now() + lock_seconds
            held.real_deadline = time.monotonic() + held.puller.ack_wait
            out.append(True)
        if any(s.token[:1] != "h" for s in settlements):
            with conn.errors("renew"):
                await conn.nc.flush(timeout=int(REQUEST_TIMEOUT))
        return out

    async def dead_letter(
        self, queue: str, settlement: SettlementRef, *, reason: str, error: str | None = None
    ) -> bool:
        """Copy the message to ``<ns>.dlq.<queue>`` with why, then terminate it in the queue."""
        conn = self._conn
        conn.check_open()
        subject = conn.subjects.dead(queue)
        headers_for = self._dlq.headers
        if settlement.token[:1] == "h":
            handoff = self._handoffs.find(queue, settlement)
            if handoff is None:
                return False
            key, info = f"ho:{handoff.info.message_id}", handoff.info.encode()
            await conn.publish(
                subject, handoff.body, headers_for(queue, key, info, 1, reason, error)
            )
            return True
        held = self._locks.take(queue, settlement)
        if held is None:
            return False
        msg = held.msg
        headers = msg.headers or {}
        delivered = int(msg.metadata.num_delivered)
        meta = await self._meta.get(held.seq) if (held.has_meta or delivered > 1) else None
        dl_headers = headers_for(
            queue,
            f"{held.seq}:{delivered}",
            headers.get(H_INFO, ""),
            attempts(delivered, meta.phantom if meta else 0, headers),
            reason,
            error,
        )
        await conn.publish(subject, msg.data or b"", dl_headers)
        await self._acks.ack_sync(msg, b"+TERM")
        if meta is not None or held.has_meta:
            await self._meta.drop(held.seq)
        return True
