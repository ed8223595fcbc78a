"""The facade: :class:`NatsBroker` builds the collaborators of one connection and hands each
operation of the seam to the one that owns it.

=================  ==========================================================
collaborator       operations
=================  ==========================================================
``Publisher``      ``send`` (:mod:`.publish`, with :mod:`.depth`, :mod:`.dedup`)
``Receiver``       ``receive`` (:mod:`.receive`, :mod:`.pullers`, :mod:`.locks`)
``Settler``        ``ack``, ``release``, ``renew`` (:mod:`.settle`, :mod:`.acks`)
``DeadLetters``    ``dead_letter``, ``put_dead_letter``, ``dead_letters``,
                   ``resubmit``, ``purge_dead_letters`` (:mod:`.dead_letters`)
``Depths``         ``depth``, ``dead_letter_depth``, ``queues``
``ProcessedKeys``  ``is_processed`` (:mod:`.processed`)
``Bindings``       ``bind``, ``unbind``, ``bindings``
``Watches``        ``wait`` (:mod:`.watch`)
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
from ..base import DeadLetter, Delivery, Envelope, SettlementRef
from .acks import Acks
from .bindings import Bindings
from .connection import Connection
from .dead_letters import DeadLetters
from .dedup import DedupKeys
from .depth import Depths
from .direct import Direct, Handler
from .handoff import HANDOFF_TIMEOUT, Handoffs
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

    Each seam operation is a plain method that returns its collaborator's coroutine (await
    it as usual): the facade adds no coroutine and no await to the publish and consume paths.
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
        watches = self._watches = Watches(conn, clock, pullers.by_queue, locks)
        pullers.on_new_queue = watches.watch
        depths = self._depths = Depths(conn, acks)
        handoffs = self._handoffs = Handoffs(conn, clock, watches, depths)
        watches.on_handoff = handoffs.on_remote
        meta = MetaStore(conn, buckets.meta)
        dedup = DedupKeys(conn, buckets.dedup, clock)
        publisher = self._publisher = Publisher(
            conn, clock, watches, depths, dedup, self.dedup_window
        )
        processed = self._processed = ProcessedKeys(conn, buckets.done, clock)
        self._receiver = Receiver(conn, clock, pullers, locks, meta, watches, handoffs)
        # what the engine stores by itself goes through the broker's ``send``, looked up
        # per call (as a method of one class did), so a wrapper set on the broker sees it
        store = self._store
        self._settler = Settler(
            conn, clock, locks, meta, acks, handoffs, watches, publisher, processed, store
        )
        self._dead = DeadLetters(conn, clock, locks, meta, acks, handoffs, watches)
        self._bindings = Bindings(conn, buckets.bind)
        self._direct = Direct(conn, clock, handoffs, store)
        self._inbox = Inbox(conn, acks.pending, pullers.by_name)
        conn.on_reconnect.append(self._reconnected)

    def _store(self, envelopes: Sequence[Envelope]) -> Coroutine[Any, Any, list[bool]]:
        """``self.send`` looked up now (see ``__init__``)."""
        return self.send(envelopes)

    async def open(self) -> None:
        """Start taking what comes to the connection's inbox (the factory calls this)."""
        await self._inbox.open()

    # ------------------------------------------------------------------ publish, consume
    def send(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_depth: int | None = None,
        dedup_window: float = 0.0,
    ) -> Coroutine[Any, Any, list[bool]]:
        """Enqueue the envelopes; False for a ``dedup_key`` seen within ``dedup_window``."""
        return self._publisher.send(envelopes, max_depth=max_depth, dedup_window=dedup_window)

    def receive(
        self, queue: str, max_messages: int, lock_seconds: float
    ) -> Coroutine[Any, Any, list[Delivery]]:
        """Lock and return up to ``max_messages`` available messages: priority, then FIFO."""
        return self._receiver.receive(queue, max_messages, lock_seconds)

    def ack(
        self,
        queue: str,
        settlements: Sequence[SettlementRef],
        *,
        processed_key: str | None = None,
        processed_ttl: float = 0.0,
        outbox: Sequence[Envelope] = (),
    ) -> Coroutine[Any, Any, list[bool]]:
        """Remove settled messages (double ack); outbox and processed key first (not atomic)."""
        return self._settler.ack(
            queue,
            settlements,
            processed_key=processed_key,
            processed_ttl=processed_ttl,
            outbox=outbox,
        )

    def release(
        self, queue: str, settlement: SettlementRef, *, delay: float = 0.0, error: str | None = None
    ) -> Coroutine[Any, Any, bool]:
        """``nak(delay)``: delivered again after ``delay`` seconds; ``error`` is kept."""
        return self._settler.release(queue, settlement, delay=delay, error=error)

    def renew(
        self, queue: str, settlements: Sequence[SettlementRef], lock_seconds: float
    ) -> Coroutine[Any, Any, list[bool]]:
        """Restart locks with ``+WPI``; the server extends by the consumer's ``ack_wait``."""
        return self._settler.renew(queue, settlements, lock_seconds)

    def wait(self, queue: str, timeout: float) -> Coroutine[Any, Any, None]:
        """Return when something was published to ``queue`` (any process), a local release or
        lock deadline comes due, or after ``timeout`` seconds of real time."""
        return self._watches.wait(queue, timeout)

    # ------------------------------------------------------------------ dead letters
    def dead_letter(
        self, queue: str, settlement: SettlementRef, *, reason: str, error: str | None = None
    ) -> Coroutine[Any, Any, bool]:
        """Copy the message to ``<ns>.dlq.<queue>`` with why, then terminate it in the queue."""
        return self._dead.dead_letter(queue, settlement, reason=reason, error=error)

    def put_dead_letter(
        self, envelope: Envelope, *, reason: str, error: str | None = None, attempts: int = 0
    ) -> Coroutine[Any, Any, bool]:
        """Store ``envelope`` straight in its queue's dead-letter queue (never deliverable);
        False when a dead letter of that id is there already."""
        return self._dead.put(envelope, reason=reason, error=error, attempts=attempts)

    def dead_letters(self, queue: str, limit: int = 100) -> Coroutine[Any, Any, list[DeadLetter]]:
        """The queue's dead letters, oldest first."""
        return self._dead.dead_letters(queue, limit)

    def resubmit(self, queue: str, message_id: str) -> Coroutine[Any, Any, bool]:
        """Republish a dead letter to its queue (new stream message: attempts reset), delete it."""
        return self._dead.resubmit(queue, message_id)

    def purge_dead_letters(self, queue: str) -> Coroutine[Any, Any, int]:
        """Delete the queue's dead letters; return how many."""
        return self._dead.purge(queue)

    # ------------------------------------------------------------------ inspection, keys
    def depth(self, queue: str) -> Coroutine[Any, Any, int]:
        """Messages in the queue (available, delayed or locked), dead letters excluded."""
        return self._depths.depth(queue)

    def dead_letter_depth(self, queue: str) -> Coroutine[Any, Any, int]:
        """Messages in the queue's dead-letter queue."""
        return self._depths.dead_letter_depth(queue)

    def queues(self) -> Coroutine[Any, Any, list[str]]:
        """Names of queues that hold messages or dead letters."""
        return self._depths.queues()

    def is_processed(self, key: str) -> Coroutine[Any, Any, bool]:
        """Whether ``key`` was recorded by ``ack`` and its ttl (engine clock) has not run out."""
        return self._processed.is_processed(key)

    def bind(self, topic: str, queue: str) -> Coroutine[Any, Any, None]:
        """Subscribe ``queue`` to ``topic`` (durable, shared by every process)."""
        return self._bindings.bind(topic, queue)

    def unbind(self, topic: str, queue: str) -> Coroutine[Any, Any, None]:
        """Remove a binding."""
        return self._bindings.unbind(topic, queue)

    def bindings(self, topic: str) -> Coroutine[Any, Any, list[str]]:
        """Queues bound to ``topic``."""
        return self._bindings.bindings(topic)

    # ------------------------------------------------------------------ direct delivery
    def listen_direct(self, queue: str, handler: Handler) -> Coroutine[Any, Any, None]:
        """Take envelopes sent to ``queue`` with :meth:`send_direct` while this process runs;
        ``handler(body)`` says whether it took the message."""
        return self._direct.listen(queue, handler)

    def send_direct(
        self, env: Envelope, *, reply_for: str | None = None, timeout: float = 2.0
    ) -> Coroutine[Any, Any, bool]:
        """Hand ``env`` to a live :meth:`listen_direct` listener of its queue (nothing
        stored); ``reply_for`` is the id of the handed-off request ``env`` answers. True
        only when it was taken; on False the caller must fall back to :meth:`send`."""
        return self._direct.send(env, reply_for=reply_for, timeout=timeout)

    def hand_off(
        self, env: Envelope, *, reply_queue: str | None = None, wait: float = HANDOFF_TIMEOUT
    ) -> Coroutine[Any, Any, bool]:
        """Offer a request to a consumer of its queue that is live, idle and caught up right
        now (nothing stored); True when one took it, else the caller must :meth:`send` it."""
        return self._direct.hand_off(env, reply_queue=reply_queue, wait=wait)

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
            names = conn.subjects
            await conn.purge(names.q_stream, names.queue_filter(queue))
            await conn.purge(names.dlq_stream, names.dead(queue))

    async def _reconnected(self) -> None:
        """Wake everything that waits on the old connection; send unconfirmed acks again."""
        self._pullers.reconnected()
        self._watches.wake_all()
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
        self._watches.close()
        with contextlib.suppress(Exception):
            await conn.nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await conn.nc.close()

    async def drop_namespace(self) -> None:
        """Delete every stream and bucket of this namespace (all queues, dead letters,
        bindings and records), then close. For tests and administration."""
        self._conn.check_open()
        await drop(self._conn)
        self._locks.held.clear()
        await self.close()

    async def __aenter__(self) -> NatsBroker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
