"""The durable pull consumers: one per (queue, priority) that holds messages, and the pull
requests they answer.

Layout (the reasoning is in ARCHITECTURE.md): each consumer is filtered on one priority's
subject, and it exists only once that priority of the queue has held a message. Which
priorities hold messages is learnt when the queue is prepared (one ``STREAM.INFO`` with a
subject filter, :meth:`.watch.Watches.prepare`), from publish notices (they name the
priority), from this process's own sends and releases, and from the engine's slow safety
poll; the first receive that meets such a priority creates its consumer. An agent that gets
messages of one priority costs one consumer on the server; an idle one that never got any
costs none. A consumer nobody pulls from for ``CONSUMER_INACTIVE_THRESHOLD`` is removed by
the server (its messages stay in the stream; it is created again when needed).

A pull request is ``no_wait`` and asks for exactly the number of messages still wanted, so
a receive never locks more than it asked for (no lingering pull request can grab messages
later). A priority found empty is skipped for ``EMPTY_HINT_SECONDS`` unless a publish or
release to it is seen; a consumer that does not answer (its leader is moving) is skipped
with a backoff, so the other priorities keep flowing. The deliveries and status answers of
a pull come to the connection's inbox (:mod:`.inbox`), which hands them to the
:class:`Puller` collecting them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from ...errors import BrokerError
from .connection import Connection
from .subjects import PRIORITIES, Subjects
from .translate import caused_by

__all__ = ["EMPTY_HINT_SECONDS", "Puller", "Pullers", "QueueConsumers"]

#: Seconds to wait for the answer to one pull request (no_wait: normally milliseconds).
FETCH_TIMEOUT = 1.0
#: A consumer that did not answer a pull (its leader is moving) is skipped this long at
#: first, doubling up to the maximum, so the other priorities are not held up.
UNRESPONSIVE_BACKOFF = (0.5, 4.0)
#: A durable consumer nobody pulls from for this long is removed by the server (its messages
#: stay in the stream; the next receive creates the consumer again).
CONSUMER_INACTIVE_THRESHOLD = 24 * 3600.0
#: How long a pull that found a priority empty lets receive skip it (see :class:`Puller`).
EMPTY_HINT_SECONDS = 0.25
#: ``ack_wait`` of a queue's consumers until a receive names its ``lock_seconds``.
DEFAULT_ACK_WAIT = 30.0


@dataclass(slots=True)
class Puller:
    """One durable pull consumer (queue, priority) and the buffer its deliveries land in.

    Times are ``time.monotonic()``: they follow the server's real clock (its ``ack_wait``,
    its answers), not the engine's."""

    name: str
    queue: str
    priority: int
    subject: str
    ack_wait: float
    next_subject: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    missing: bool = False
    #: deliveries that arrived while no fetch was collecting (a late answer): used next time
    stash: deque[tuple[float, Msg]] = field(default_factory=deque)
    #: the fetch in progress: where deliveries go, how many it wants, and its completion
    collector: list[Msg] | None = None
    want: int = 0
    done: asyncio.Future[str] | None = None
    #: after a pull found nothing, skip this priority until ``empty_until`` unless
    #: something may have become available (``next_event``: a publish seen, a release or a
    #: lock deadline of this process). Events of other processes that are not publishes
    #: (their lock expiries, delayed redeliveries) are seen at most EMPTY_HINT_SECONDS late.
    empty_until: float = 0.0
    next_event: float = float("inf")
    #: skipped until then because a pull got no answer; ``backoff`` grows while that lasts
    unresponsive_until: float = 0.0
    backoff: float = 0.0

    def may_have(self, at: float = 0.0) -> None:
        """Something may be available from ``at`` (monotonic; 0 = now)."""
        if at < self.next_event:
            self.next_event = at

    def skip(self, now: float) -> bool:
        """Whether a receive at ``now`` can pass this priority by without a pull."""
        if now < self.unresponsive_until:
            return True
        return now < self.empty_until and now < self.next_event


@dataclass(slots=True)
class QueueConsumers:
    """The consumers of one queue, by priority: a :class:`Puller` once created, else None;
    ``wanted[p]`` once priority ``p`` is known to have held a message (its consumer is
    created by the next receive)."""

    queue: str
    ack_wait: float
    slots: list[Puller | None] = field(default_factory=lambda: [None] * len(PRIORITIES))
    wanted: list[bool] = field(default_factory=lambda: [False] * len(PRIORITIES))

    def note(self, priority: int) -> None:
        """Priority ``priority`` may have messages: pull it (creating its consumer) next."""
        puller = self.slots[priority]
        if puller is None:
            self.wanted[priority] = True
        else:
            puller.may_have()

    def note_all(self) -> None:
        """Every priority with a consumer may have messages."""
        for puller in self.slots:
            if puller is not None:
                puller.may_have()

    def created(self) -> list[Puller]:
        """The pullers created so far, priority 0 first."""
        return [p for p in self.slots if p is not None]


class Pullers:
    """Every consumer this engine pulls from, by name (for the inbox) and by queue."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._subjects: Subjects = conn.subjects
        #: consumer name -> puller (deliveries name their consumer)
        self.by_name: dict[str, Puller] = {}
        #: queue -> its consumers by priority (a queue is here once prepared)
        self.by_queue: dict[str, QueueConsumers] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: consumers created on the server by this engine (a figure for tests and benchmarks)
        self.creations = 0

    def lock(self, queue: str) -> asyncio.Lock:
        """The lock that orders creating and removing ``queue``'s consumers."""
        lock = self._locks.get(queue)
        if lock is None:
            lock = self._locks[queue] = asyncio.Lock()
        return lock

    def queue(self, queue: str) -> QueueConsumers:
        """``queue``'s consumers (none created yet for a queue seen first)."""
        qc = self.by_queue.get(queue)
        if qc is None:
            qc = self.by_queue[queue] = QueueConsumers(queue, DEFAULT_ACK_WAIT)
        return qc

    def _config(self, puller: Puller) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=puller.name,
            durable_name=puller.name,
            filter_subject=puller.subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=puller.ack_wait,
            max_deliver=-1,
            max_ack_pending=-1,
            inactive_threshold=CONSUMER_INACTIVE_THRESHOLD,
        )

    async def _create(self, puller: Puller) -> None:
        config = self._config(puller)
        js, stream = self._conn.js, self._subjects.q_stream
        await self._conn.retrying("create consumer", lambda: js.add_consumer(stream, config))
        self.creations += 1
        puller.missing = False

    async def for_queue(self, queue: str, lock_seconds: float) -> QueueConsumers:
        """``queue``'s consumers with ``ack_wait = lock_seconds``: those wanted and not made
        yet are created, those whose lock differs or that the server lost are updated."""
        qc = self.queue(queue)
        ack_wait = max(float(lock_seconds), 0.001)
        if qc.ack_wait == ack_wait and not any(qc.wanted) and not self._stale(qc):
            return qc
        async with self.lock(queue):
            qc = self.queue(queue)
            qc.ack_wait = ack_wait
            todo: list[Puller] = []
            for priority in PRIORITIES:
                puller = qc.slots[priority]
                if puller is None:
                    if qc.wanted[priority]:
                        puller = self._new(queue, priority, ack_wait)
                        todo.append(puller)
                elif puller.ack_wait != ack_wait or puller.missing:
                    puller.ack_wait = ack_wait
                    todo.append(puller)
            await asyncio.gather(*(self._create(p) for p in todo))
            for puller in todo:
                if qc.slots[puller.priority] is None:
                    qc.slots[puller.priority] = puller
                    self.by_name[puller.name] = puller
                qc.wanted[puller.priority] = False
            return qc

    @staticmethod
    def _stale(qc: QueueConsumers) -> bool:
        return any(p is not None and (p.missing or p.ack_wait != qc.ack_wait) for p in qc.slots)

    def _new(self, queue: str, priority: int, ack_wait: float) -> Puller:
        names = self._subjects
        name = f"{names.consumer_base(queue)}_{priority}"
        return Puller(
            name=name,
            queue=queue,
            priority=priority,
            subject=names.queue(queue, priority),
            ack_wait=ack_wait,
            next_subject=names.next_request(name),
        )

    async def fetch(self, puller: Puller, want: int) -> list[Msg]:
        """Lock up to ``want`` messages of one consumer (one no_wait pull request)."""
        async with puller.lock:
            got: list[Msg] = []
            if puller.stash:
                margin = min(0.5, puller.ack_wait / 4)
                now = time.monotonic()
                while puller.stash and len(got) < want:
                    received, msg = puller.stash.popleft()
                    if now - received < puller.ack_wait - margin:
                        got.append(msg)
                if len(got) >= want:
                    return got
            need = want - len(got)
            done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            puller.collector, puller.want, puller.done = got, want, done
            try:
                with self._conn.errors("fetch"):
                    await self._conn.nc.publish(
                        puller.next_subject,
                        b'{"batch":%d,"no_wait":true}' % need,
                        reply=self._conn.inbox_prefix + puller.name,
                    )
                try:
                    status = await asyncio.wait_for(done, FETCH_TIMEOUT)
                except TimeoutError:
                    status = "timeout"
            finally:
                puller.collector, puller.want, puller.done = None, 0, None
            _after_pull(puller, status, bool(got))
            return got

    async def forget(self, queue: str) -> None:
        """Remove ``queue``'s consumers (here and on the server, those of every priority,
        whichever process made them); call under :meth:`lock`."""
        qc = self.by_queue.pop(queue, None)
        for p in qc.created() if qc is not None else ():
            self.by_name.pop(p.name, None)
        base = self._subjects.consumer_base(queue)
        for priority in PRIORITIES:
            try:
                with self._conn.errors("delete consumer"):
                    await self._conn.js.delete_consumer(
                        self._subjects.q_stream, f"{base}_{priority}"
                    )
            except BrokerError as exc:
                if not caused_by(exc, nats.js.errors.NotFoundError):
                    raise

    def reconnected(self) -> None:
        """After a reconnect every priority may have news; a pull in flight is over."""
        for puller in self.by_name.values():
            puller.may_have()
            puller.unresponsive_until = 0.0
            if puller.done is not None and not puller.done.done():
                puller.done.set_result("reconnect")

    def close(self) -> None:
        """End the pulls in flight."""
        for puller in self.by_name.values():
            if puller.done is not None and not puller.done.done():
                puller.done.set_result("closed")


def _after_pull(puller: Puller, status: str, got_any: bool) -> None:
    """Learn from a pull's outcome: back off an unresponsive consumer, notice a lost one."""
    if status == "timeout" and not got_any:
        low, high = UNRESPONSIVE_BACKOFF
        puller.backoff = min(high, puller.backoff * 2) if puller.backoff else low
        puller.unresponsive_until = time.monotonic() + puller.backoff
    elif status != "reconnect":
        puller.backoff = 0.0
    if status.startswith("503") or (status.startswith("409") and "deleted" in status.lower()):
        puller.missing = True
