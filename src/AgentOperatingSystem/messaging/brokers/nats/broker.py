"""The facade: :class:`NatsBroker` builds the collaborators of one connection and hands each
operation of the seam to the one that owns it.

=================  ==========================================================
collaborator       operations
=================  ==========================================================
``Publisher``      ``send`` (:mod:`.publish`, with :mod:`.depth`, :mod:`.dedup`)
``Receiver``       ``receive`` (:mod:`.receive`, :mod:`.pullers`, :mod:`.locks`)
``Settler``        ``ack``, ``release``, ``renew``, ``dead_letter`` (:mod:`.settle`,
                   :mod:`.acks`)
``DeadLetters``    ``put_dead_letter``, ``dead_letters``, ``resubmit``,
                   ``purge_dead_letters`` (:mod:`.dead_letters`)
``Depths``         ``depth``, ``dead_letter_depth``, ``queues``
``ProcessedKeys``  ``is_processed`` (:mod:`.processed`)
``Bindings``       ``bind``, ``unbind``, ``bindings``
``Watches``        ``wait``, ``prepare`` (:mod:`.watch`, :mod:`.timers`)
``Direct``         ``listen_direct``, ``send_direct``, ``hand_off`` (:mod:`.direct`,
                   the consumer's side in :mod:`.handoff`)
=================  ==========================================================

The facade itself runs what spans collaborators: ``close``, ``delete_queue``,
``drop_namespace`` and the reconnect hook.
"""

from __future__ import annotations

import contextlib
from typing import Any, Coroutine, Sequence

import nats.errors

from ...clock import Clock
from ..base import Envelope
from .acks import Acks
from .bindings import Bindings
from .connection import Connection
from .dead_letters import DeadLetters
from .dedup import DedupKeys
from .depth import Depths
from .direct import Direct
from .handoff import Handoffs
from .inbox import Inbox
from .locks import Locks
from .meta import MetaStore
from .processed import ProcessedKeys
from .publish import Publisher
from .pullers import Pullers
from .receive import Receiver
from .settle import Settler
from .setup import Buckets, drop
from .watch import Watches

__all__ = ["NatsBroker"]


class NatsBroker:
    """The :class:`~..base.Broker` seam, and :class:`~..base.DirectDelivery`, on NATS
    JetStream; made by :func:`~.factory.create_nats_broker`.

    Each seam operation is an attribute: its collaborator's method, bound in ``__init__``
    (the table in the module docs says which), so the facade adds no call, coroutine or
    await to the publish and consume paths. What spans collaborators is a method here.
    """

    needs_bytes: bool = True

    def __init__(
        self,
        conn: Connection,
        buckets: Buckets,
        *,
        clock: Clock,
        replicas: int,
        dedup_window: float,
    ) -> None:
        self._conn = conn
        self.namespace = conn.subjects.namespace
        self.replicas = replicas
        self.dedup_window = float(dedup_window)
        acks = self._acks = Acks(conn)
        pullers = self._pullers = Pullers(conn)
        locks = self._locks = Locks(clock, acks)
        watches = self._watches = Watches(conn, clock, pullers, locks)
        depths = self._depths = Depths(conn, acks)
        handoffs = self._handoffs = Handoffs(conn, clock, watches, depths)
        watches.on_handoff = handoffs.on_remote
        meta = MetaStore(conn, buckets.meta)
        dedup = DedupKeys(conn, buckets.dedup, clock)
        publisher = self._publisher = Publisher(
            conn, clock, watches, depths, dedup, self.dedup_window
        )
        processed = ProcessedKeys(conn, buckets.done, clock)
        receiver = Receiver(conn, clock, pullers, locks, meta, watches, handoffs)
        # what the engine stores by itself goes through the broker's ``send``, looked up
        # per call (as a method of one class did), so a wrapper set on the broker sees it
        store = self._store
        dead = DeadLetters(conn, clock, watches)
        settler = Settler(
            conn, clock, locks, meta, acks, handoffs, watches, publisher, processed, store, dead
        )
        binds = Bindings(conn, buckets.bind)
        direct = Direct(conn, clock, handoffs, store)
        self._inbox = Inbox(conn, acks.pending, pullers.by_name)
        # The seam: each operation is its collaborator's method, bound once here (the table
        # in the module docs), so a call goes straight to the code that owns it.
        self.send = publisher.send
        self.receive = receiver.receive
        self.ack = settler.ack
        self.release = settler.release
        self.renew = settler.renew
        self.dead_letter = settler.dead_letter
        self.wait = watches.wait
        self.prepare = watches.prepare
        self.put_dead_letter = dead.put
        self.dead_letters = dead.dead_letters
        self.resubmit = dead.resubmit
        self.purge_dead_letters = dead.purge
        self.depth = depths.depth
        self.dead_letter_depth = depths.dead_letter_depth
        self.queues = depths.queues
        self.is_processed = processed.is_processed
        self.bind = binds.bind
        self.unbind = binds.unbind
        self.bindings = binds.bindings
        self.listen_direct = direct.listen
        self.send_direct = direct.send
        self.hand_off = direct.hand_off
        conn.on_reconnect.append(self._reconnected)

    def _store(self, envelopes: Sequence[Envelope]) -> Coroutine[Any, Any, list[bool]]:
        """``self.send`` looked up now (see ``__init__``)."""
        return self.send(envelopes)

    async def open(self) -> None:
        """Start taking what comes to the connection's inbox (the factory calls this)."""
        await self._inbox.open()

    @property
    def handoff_grace(self) -> float:
        """Seconds (engine clock) before an unclaimed handoff goes to the durable queue."""
        return self._handoffs.grace

    @handoff_grace.setter
    def handoff_grace(self, seconds: float) -> None:
        self._handoffs.grace = seconds

    @property
    def handoffs_taken(self) -> int:
        """Handoffs this broker's consumers took (from this process or others)."""
        return self._handoffs.taken

    # ------------------------------------------------------------------ spanning
    async def delete_queue(self, queue: str) -> None:
        """Remove the queue's consumers, messages and dead letters."""
        conn = self._conn
        conn.check_open()
        await self._acks.settle()
        self._depths.forget(queue)
        async with self._pullers.lock(queue):
            await self._pullers.forget(queue)
            self._locks.drop_queue(queue)
            self._watches.unprepare(queue)
            names = conn.subjects
            await conn.purge(names.q_stream, names.queue_filter(queue))
            await conn.purge(names.dlq_stream, names.dead(queue))

    async def _reconnected(self) -> None:
        """Wake everything that waits on the old connection; send unconfirmed acks again."""
        self._pullers.reconnected()
        self._watches.reconnected()
        await self._acks.resend()

    async def close(self) -> None:
        """Hand unsettled locks back, close the connection; later calls raise BrokerClosedError."""
        conn = self._conn
        if conn.closed or conn.closing:
            return
        conn.closing = True  # from now on no handoff is taken
        await self._handoffs.close()
        await self._acks.drain(timeout=2.0)
        conn.closed = True
        conn.fail_requests(nats.errors.ConnectionClosedError())  # what waits on it fails now
        self._pullers.close()
        await self._locks.hand_back()
        await self._watches.close()
        with contextlib.suppress(Exception):
            await conn.nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await conn.nc.close()

    async def drop_namespace(self) -> None:
        """Delete every stream and bucket of this namespace (all queues, dead letters,
        bindings and records), then close. For tests and administration."""
        self._conn.check_open()
        await drop(self._conn)
        self._locks.clear()
        await self.close()

    async def __aenter__(self) -> NatsBroker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
