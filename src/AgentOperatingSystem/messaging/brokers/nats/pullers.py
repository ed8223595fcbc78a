"""The durable pull consumers: one per (queue, priority), and the pull requests they answer.

Each consumer is filtered on its priority's subject. A pull request is ``no_wait`` and asks
for exactly the number of messages still wanted, so a receive never locks more than it asked
for (no lingering pull request can grab messages later). A priority found empty is skipped
for ``EMPTY_HINT_SECONDS`` unless a publish or release to it is seen; a consumer that does
not answer (its leader is moving) is skipped with a backoff, so the other priorities keep
flowing. The deliveries and status answers of a pull come to the connection's inbox
(:mod:`.inbox`), which hands them to the :class:`Puller` collecting them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from ...errors import BrokerError
from .connection import Connection
from .subjects import PRIORITIES, Subjects
from .translate import caused_by

__all__ = ["EMPTY_HINT_SECONDS", "Puller", "Pullers"]

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


class Pullers:
    """Every consumer this engine pulls from, by name (for the inbox) and by queue."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._subjects: Subjects = conn.subjects
        #: consumer name -> puller (deliveries name their consumer)
        self.by_name: dict[str, Puller] = {}
        #: queue -> its pullers, by priority
        self.by_queue: dict[str, list[Puller]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: awaited once per queue, when its consumers are first created (the facade points
        #: it at the watches, so publishes wake ``wait`` from then on)
        self.on_new_queue: Callable[[str], Awaitable[object]] = _nothing

    def lock(self, queue: str) -> asyncio.Lock:
        """The lock that orders creating and removing ``queue``'s consumers."""
        lock = self._locks.get(queue)
        if lock is None:
            lock = self._locks[queue] = asyncio.Lock()
        return lock

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
        puller.missing = False

    async def for_queue(self, queue: str, lock_seconds: float) -> list[Puller]:
        """``queue``'s pullers with ``ack_wait = lock_seconds``: created on first use, and
        updated when the lock differs or the server lost a consumer."""
        pullers = self.by_queue.get(queue)
        ack_wait = max(float(lock_seconds), 0.001)
        if pullers is not None and all(p.ack_wait == ack_wait and not p.missing for p in pullers):
            return pullers
        async with self.lock(queue):
            pullers = self.by_queue.get(queue)
            if pullers is None:
                pullers = self._new(queue, ack_wait)
                await asyncio.gather(*(self._create(p) for p in pullers))
                for p in pullers:
                    self.by_name[p.name] = p
                self.by_queue[queue] = pullers
                await self.on_new_queue(queue)  # from now on publishes wake ``wait``
                return pullers
            stale = [p for p in pullers if p.ack_wait != ack_wait or p.missing]
            for p in stale:
                p.ack_wait = ack_wait
            await asyncio.gather(*(self._create(p) for p in stale))
            return pullers

    def _new(self, queue: str, ack_wait: float) -> list[Puller]:
        names = self._subjects
        base = names.consumer_base(queue)
        return [
            Puller(
                name=f"{base}_{p}",
                queue=queue,
                priority=p,
                subject=names.queue(queue, p),
                ack_wait=ack_wait,
                next_subject=names.next_request(f"{base}_{p}"),
            )
            for p in PRIORITIES
        ]

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
        """Remove ``queue``'s consumers (here and on the server); call under :meth:`lock`."""
        for p in self.by_queue.pop(queue, None) or []:
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


async def _nothing(queue: str) -> None:
    return None


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
