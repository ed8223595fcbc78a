"""The one consume loop: receive -> admit -> handle -> settle, for every queue the bus reads.

A :class:`Consumer` reads one queue. What it does with an admitted message is its
``handle`` (a subscription's handler dispatch, the reply listener's correlation, an event
stream's buffer); everything else is the same for all three:

* **receive** up to ``batch`` messages under a lock (``max_concurrency`` free slots when
  handlers run concurrently); an empty queue is waited on with the engine's
  ``wait(queue, None)``: no timer of its own, the engine wakes it (a send or release, from
  any process on the engine, or a due time: see :meth:`~..brokers.base.Broker.wait`);
* **admit** (:class:`~.admit.Admission`): a plain in-process delivery needs no check,
  anything else is decoded and checked, and dead-lettered with a reason when it must not
  reach ``handle``;
* **handle**: ``handle(delivery, message, samples)`` returns True when the delivery is to be
  acked, False when it settled it itself (nack, dead letter, an exactly-once ack);
* **settle**: in order, the acks of one batch are one engine call; concurrently, each is
  acked on its own. Acks are reported to telemetry when ``report`` is set.

Held deliveries have their locks renewed by :class:`LockRenewal` while they are handled,
and are released (available again at once) when the consumer stops before handling them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import KW_ONLY, dataclass, field
from typing import Awaitable, Callable, Iterable

from ..brokers.base import Delivery
from ..errors import BrokerClosedError, BrokerError, MessagingError
from ..policy import DEFAULT_OPTIONS
from ..types import Message, MessageType
from .admit import Admission
from .state import Core

__all__ = ["Consumer", "Handle", "LockRenewal", "Samples"]

log = logging.getLogger("aos.messaging.bus")
_SETTLE_FAILED = "settling %s in %s failed; it will be redelivered"

Samples = list[tuple[str, float, float]]
"""Handler timings of one batch for metrics: (message type, delivery latency, duration)."""

Handle = Callable[[Delivery, Message, Samples | None], Awaitable[bool]]
"""What a consumer does with an admitted message: True to have it acked."""


@dataclass(eq=False, repr=False)
class Consumer:
    """Reads one queue with the one loop (see the module docstring).

    ``run()`` is the loop as a task (:meth:`start`); :meth:`poll` is one round of it, for a
    reader that pulls (an event stream). ``close()`` ends the loop after the message in
    hand.
    """

    _core: Core
    _admission: Admission
    queue: str
    _handle: Handle
    _: KW_ONLY
    batch: int = 64
    concurrency: int = 1
    #: True: acks are reported to telemetry (subscriptions).
    report: bool = False
    task: asyncio.Task[None] | None = field(default=None, init=False)
    #: True while a receive or a batch is under way (a stop then waits for it).
    busy: bool = field(default=False, init=False)
    open: bool = field(default=True, init=False)
    #: Deliveries received and not yet settled, by message id (their locks renewed).
    held: dict[str, Delivery] = field(default_factory=dict, init=False)
    #: Handler tasks when ``concurrency`` > 1.
    running: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    drained: bool = field(default=False, init=False)

    def start(self, name: str) -> asyncio.Task[None]:
        """Run the loop in a task (again, when the last one ended)."""
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self.run(), name=name)
        return self.task

    def close(self) -> None:
        """End the loop after the message in hand; a waiting loop is cancelled."""
        self.open = False
        if self.task is not None and not self.busy:
            self.task.cancel()

    async def run(self) -> None:
        """The loop: rounds until closed, then let running handlers finish and release
        what was received but not handled."""
        core = self._core
        broker = core.engine
        queue = self.queue
        while self.open and not core.stopping:
            if not await self.poll():
                return
            if self.drained and not broker.needs_bytes and self.open and not core.stopping:
                # In-process engine, queue empty after this batch: wait for the next publish
                # (its wait() returns at once when something arrived meanwhile).
                await broker.wait(queue, None)
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
        await self.release_held()

    async def poll(self) -> bool:
        """One round: receive a batch, admit, handle and settle each (waiting a while when
        the queue is empty). False once the engine is closed.

        In order (``concurrency`` 1), the batch's plain acks settle together after it (one
        engine call, one commit), their locks renewed meanwhile."""
        core = self._core
        broker = core.broker
        assert broker is not None  # started
        queue = self.queue
        want = self.batch
        if self.concurrency > 1:
            want = self.concurrency - len(self.running)
            if want <= 0:
                self.busy = False
                await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)
                return True
        self.busy = True
        try:
            batch = await broker.receive(queue, want, core.config.lock_seconds)
        except BrokerClosedError:
            self.busy = False
            return False
        except BrokerError:
            self.busy = False
            log.exception("receive from %s failed; retrying", queue)
            await asyncio.sleep(core.config.poll_interval)  # the back-off after a failure
            return True
        if not batch:
            self.busy = False
            # closed during the receive (close() could not cancel a busy loop): end here, as
            # nothing but the engine would wake the wait
            if self.open and not core.stopping:
                await broker.wait(queue, None)  # woken by the engine, never by a timer here
            return True
        held = self.held
        for d in batch:
            held[d.message_id] = d
        self.drained = len(batch) < want
        if self.concurrency > 1:
            self._spawn(batch)
            self.busy = False
            return True
        admission = self._admission
        plain_attempts = admission.plain_attempts
        handle = self._handle
        acks: list[Delivery] = []
        tel = core.telemetry
        # metrics only (no spans, no live listener): counted per batch, timed sampled
        samples: Samples | None = (
            [] if self.report and tel is not None and not tel.per_message else None
        )
        for d in batch:
            if not self.open or core.stopping:
                break
            try:
                msg = d.message
                if (
                    msg is None
                    or d.options is not DEFAULT_OPTIONS
                    or d.expires_at is not None
                    or d.attempts > plain_attempts
                ):
                    msg = await admission.admit(queue, d)
                if msg is not None and await handle(d, msg, samples):
                    acks.append(d)
                    continue
            except BrokerClosedError:
                pass
            except MessagingError:
                log.exception(_SETTLE_FAILED, d.message_id, queue)
            except asyncio.CancelledError:  # stopped mid-handler: left to its lock's expiry
                held.pop(d.message_id, None)
                raise
            held.pop(d.message_id, None)
        if acks or samples:
            await self._settle(acks, samples)
        self.busy = False
        return True

    def _spawn(self, batch: list[Delivery]) -> None:
        """Handle each delivery of the batch in a task of its own."""
        running = self.running
        for d in batch:
            task = asyncio.create_task(self._one(d))
            running.add(task)
            task.add_done_callback(running.discard)

    async def _one(self, d: Delivery) -> None:
        """Handle one delivery of a batch handled concurrently, and ack it on its own."""
        queue = self.queue
        admission = self._admission
        try:
            msg = d.message
            if (
                msg is None
                or d.options is not DEFAULT_OPTIONS
                or d.expires_at is not None
                or d.attempts > admission.plain_attempts
            ):
                msg = await admission.admit(queue, d)
            if msg is not None and await self._handle(d, msg, None):
                await self._settle([d], None)
        except BrokerClosedError:
            return
        except MessagingError:
            log.exception(_SETTLE_FAILED, d.message_id, queue)
        finally:
            self.held.pop(d.message_id, None)

    async def _settle(self, acks: list[Delivery], samples: Samples | None) -> None:
        """Ack deliveries that were handled (one engine call) and report them."""
        queue = self.queue
        if not acks:
            telemetry = self._core.telemetry
            if samples and telemetry is not None:
                telemetry.record_batch(queue, {}, samples)
            return
        try:
            results = await self._core.engine.ack(queue, acks)
        except BrokerClosedError:
            return
        except MessagingError:
            log.exception(
                "acking %d messages in %s failed; they will be redelivered", len(acks), queue
            )
            results = [False] * len(acks)
        held = self.held
        telemetry = self._core.telemetry if self.report else None
        if telemetry is not None and samples is not None:
            telemetry.record_batch(queue, _count_acked(queue, acks, results, held), samples)
            return
        for d, ok in zip(acks, results):
            held.pop(d.message_id, None)
            if not ok:
                log.warning("ack of %s in %s failed: its lock expired", d.message_id, queue)
            elif telemetry is not None and d.message is not None:
                telemetry.on_settle(queue, d.message.message_type._value_, "acked")

    async def release_held(self) -> None:
        """Give back what was received and not handled (available again at once)."""
        broker = self._core.broker
        if not self.held or broker is None:
            return
        held = list(self.held.values())
        self.held.clear()
        for d in held:
            try:
                await broker.release(self.queue, d)
            except BrokerClosedError:
                return

    async def stopped(self) -> None:
        """Wait for the loop and its handler tasks to end, then release what is held."""
        if self.task is not None:
            await asyncio.gather(self.task, *self.running, return_exceptions=True)
        await self.release_held()


def _count_acked(
    queue: str, acks: list[Delivery], results: list[bool], held: dict[str, Delivery]
) -> dict[str, int]:
    """Acked messages per type (and forget them in ``held``); a batch is nearly always one
    type, so runs are counted, not messages."""
    counted: dict[str, int] = {}
    run_type: MessageType | None = None
    run = 0
    for d, ok in zip(acks, results):
        held.pop(d.message_id, None)
        if ok:
            mt = d.message.message_type  # type: ignore[union-attr]  # it was handled
            if mt is run_type:
                run += 1
                continue
            if run_type is not None:
                counted[run_type._value_] = counted.get(run_type._value_, 0) + run
            run_type, run = mt, 1
        else:
            log.warning("ack of %s in %s failed: its lock expired", d.message_id, queue)
    if run_type is not None:
        counted[run_type._value_] = counted.get(run_type._value_, 0) + run
    return counted


class LockRenewal:
    """Keeps the locks of what the consumers hold alive: every ``lock_seconds / 3``."""

    def __init__(self, core: Core, consumers: Callable[[], Iterable[Consumer]]) -> None:
        self._core = core
        self._consumers = consumers
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start renewing (a task owned until :meth:`stop`)."""
        self.task = asyncio.create_task(self._run(), name="aos-lock-renewal")

    async def stop(self) -> None:
        """Stop renewing."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        core = self._core
        lock = core.config.lock_seconds
        while True:
            await core.clock.sleep(lock / 3)
            for consumer in list(self._consumers()):
                if not consumer.held:
                    continue
                try:
                    await core.engine.renew(consumer.queue, list(consumer.held.values()), lock)
                except BrokerClosedError:
                    return
                except BrokerError:
                    log.exception("renewing locks in %s failed", consumer.queue)
