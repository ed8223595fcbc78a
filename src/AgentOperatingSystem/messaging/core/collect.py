"""Collecting the reply and event-stream queues that buses which are gone left behind.

Each bus has its own reply queue, ``_reply.<instance id>`` (:mod:`.state`). A requester that
stops or dies leaves it behind on a durable engine (sqlite, nats), and an answer that comes
later would sit there for ever: nobody will read ``_reply.<gone id>`` again. So:

* an answer sent to a reply queue carries a TTL, ``config.reply_ttl_seconds`` (unless the
  responder gave it one), set by :meth:`.requests.Requests.respond`;
* each bus runs one :class:`ReplyCollector` task, on the bus's clock, started and stopped
  with the bus, that every ``reply_ttl_seconds`` sweeps the reply queues of *other* buses.

**Liveness.** A live requester's reply listener takes each answer as it comes (milliseconds),
so a live reply queue is empty at almost every instant. The collector looks into a reply
queue only when it held messages at its previous sweep too, a whole period earlier: it never
touches a queue that is being read. Looking means receiving under a lock: a message whose TTL
has passed (or, without a TTL, one enqueued more than ``reply_ttl_seconds`` ago) is
dead-lettered with the TTL reason, ``expired``; the first one that has not expired ends the
look, and it and everything else received is released at once (an answer in time is never
taken). The bus's own reply queue is never looked at. A queue left with no messages and no
dead letters is deleted.

**Bound.** An answer left in a gone requester's reply queue is seen by the first sweep after
it was sent and dead-lettered by the next, that is less than ``2 * reply_ttl_seconds`` after
it was sent (plus the sweep's own time). The dead letter stays in the queue's dead-letter
queue, with its reason, for an operator to read, resubmit or purge.

**Event streams.** A stream's queue, ``_stream.<instance id>.<agent>.<n>``, is bound to EVENT,
so once its reader is gone every later event would pile up in it. While a bus has a stream
open it keeps a heartbeat in ``_alive.<instance id>``: a message that becomes available only
``3 * reply_ttl_seconds`` after it was sent, replaced (and the bus's open streams bound again)
at every sweep. Nobody can receive it while its bus lives; a sweep of another bus that does
receive it knows that bus is gone, and does what the gone bus's ``aclose()`` would have done:
it removes the EVENT binding and the queue of each of its streams (the events a stream queue
holds are its own copies of fan-out events), then the heartbeat. Bound: the queues and
bindings of a gone bus's streams are removed less than ``4 * reply_ttl_seconds`` after its
last heartbeat. The last stream closed, or the bus stopped, removes the heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from ..brokers.base import Delivery, Envelope
from ..codec.envelope import encode
from ..errors import BrokerClosedError, MessagingError
from ..types import Message, MessageType, new_message_id
from .admit import Admission
from .state import REPLY_PREFIX, Core

__all__ = ["ALIVE_PREFIX", "STREAM_PREFIX", "Collector", "new_stream_queue"]

#: The prefix of a bus's heartbeat queue (while it has event streams open).
ALIVE_PREFIX = "_alive."
#: The prefix of an event stream's queue: ``_stream.<instance id>.<agent>.<n>``.
STREAM_PREFIX = "_stream."

log = logging.getLogger("aos.messaging.bus")

_BATCH = 64


class Collector:
    """The sweeper of other buses' reply and stream queues (one task per bus)."""

    def __init__(self, core: Core, admission: Admission) -> None:
        self._core = core
        self._admission = admission
        self.task: asyncio.Task[None] | None = None
        #: This bus's heartbeat queue.
        self.alive_queue = f"{ALIVE_PREFIX}{core.instance_id}"
        #: This bus's open stream queues (set by the bus); a heartbeat is kept while any is.
        self.open_streams: Callable[[], Iterable[str]] = tuple
        #: Streams of gone buses removed so far.
        self.streams_removed = 0
        #: Reply queues that held messages at the last sweep (candidates for the next one).
        self._held: set[str] = set()
        #: Sweeps done so far (tests wait on it).
        self.sweeps = 0
        #: Answers dead-lettered as expired so far.
        self.collected = 0

    def start(self) -> None:
        """Start sweeping every ``config.reply_ttl_seconds`` (idempotent)."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name="aos-reply-collector"
            )

    async def stop(self) -> None:
        """Cancel the sweeping task and wait for it."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        core = self._core
        period = float(core.config.reply_ttl_seconds)
        while True:
            await core.clock.sleep(period)
            try:
                await self.sweep()
                if any(True for _ in self.open_streams()):
                    await self.beat()
            except BrokerClosedError:
                return
            except MessagingError as exc:  # the engine unreachable: try at the next period
                log.warning("reply queue sweep failed: %s", exc)

    async def sweep(self) -> int:
        """Look into the reply queues of other buses once; return how many answers were
        dead-lettered as expired."""
        core = self._core
        broker = core.engine
        own = core.reply_queue
        held: set[str] = set()
        collected = 0
        for queue in await broker.queues():
            if queue.startswith(ALIVE_PREFIX) and queue != self.alive_queue:
                await self._check_alive(queue)
                continue
            if not queue.startswith(REPLY_PREFIX) or queue == own:
                continue
            if await broker.depth(queue) == 0:
                continue
            if queue in self._held:
                collected += await self._collect(queue)
                if await broker.depth(queue) == 0:
                    if await broker.dead_letter_depth(queue) == 0:
                        await broker.delete_queue(queue)
                    continue
            held.add(queue)
        self._held = held
        self.sweeps += 1
        self.collected += collected
        return collected

    async def _collect(self, queue: str) -> int:
        """Dead-letter the expired answers of ``queue`` up to the first one in time."""
        core = self._core
        broker = core.engine
        ttl = float(core.config.reply_ttl_seconds)
        count = 0
        while True:
            got = await broker.receive(queue, _BATCH, core.config.lock_seconds)
            if not got:
                return count
            now = core.clock.now()
            for i, d in enumerate(got):
                if _expires(d, ttl) > now:
                    for rest in got[i:]:
                        await broker.release(queue, rest)
                    return count
                await self._admission.dead_letter(queue, d, None, "expired", None)
                count += 1

    # ------------------------------------------------------------------ streams

    async def beat(self) -> None:
        """Replace this bus's heartbeat, and bind its open streams again (a bus that was
        stalled for longer than the bound gets its streams back)."""
        core = self._core
        broker = core.engine
        period = float(core.config.reply_ttl_seconds)
        await broker.delete_queue(self.alive_queue)
        beat = Message(
            message_type=MessageType.STATUS,
            sender_id=core.config.default_sender_id,
            recipient_id=self.alive_queue,
            content={"alive": core.instance_id},
        )
        body = encode(beat, max_bytes=core.config.max_message_bytes)
        await broker.send(
            [
                Envelope(
                    self.alive_queue,
                    beat.message_id,
                    beat.priority.value,
                    body,
                    available_at=core.clock.now() + 3 * period,
                )
            ]
        )
        for queue in self.open_streams():
            await broker.bind(MessageType.EVENT.value, queue)

    async def quiet(self) -> None:
        """This bus has no stream open any more: remove its heartbeat."""
        await self._core.engine.delete_queue(self.alive_queue)

    async def _check_alive(self, alive: str) -> None:
        """Remove the streams of the bus of heartbeat queue ``alive`` when it is gone (its
        heartbeat became receivable)."""
        broker = self._core.engine
        if not await broker.receive(alive, 1, self._core.config.lock_seconds):
            return  # alive, or replacing its heartbeat right now
        prefix = f"{STREAM_PREFIX}{alive[len(ALIVE_PREFIX) :]}."
        topic = MessageType.EVENT.value
        gone = {q for q in await broker.bindings(topic) if q.startswith(prefix)}
        gone.update(q for q in await broker.queues() if q.startswith(prefix))
        for queue in sorted(gone):
            await broker.unbind(topic, queue)
            await broker.delete_queue(queue)
            log.info("removed event stream %s of a bus that is gone", queue)
        await broker.delete_queue(alive)
        self.streams_removed += len(gone)


def new_stream_queue(instance_id: str, agent_id: str | None) -> str:
    """The queue name of a new event stream of bus ``instance_id``."""
    return f"{STREAM_PREFIX}{instance_id}.{agent_id or 'anon'}.{new_message_id()[:12]}"


def _expires(d: Delivery, ttl: float) -> float:
    """When a delivery of a reply queue stops being an answer in time."""
    return d.expires_at if d.expires_at is not None else d.enqueued_at + ttl
