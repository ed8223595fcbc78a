"""The :class:`SqliteBroker` facade: the seam's coroutines, each one operation queued to the
:class:`~.writer.Writer`; :meth:`SqliteBroker.wait` is :class:`~.waiting.Waiting`'s (wake-ups
from this process, the other processes on the file, due times, and one safety poll)."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from ...clock import SYSTEM_CLOCK, Clock
from ...errors import BrokerClosedError, BrokerUnavailableError, ConfigurationError
from ..base import DeadLetter, Delivery, Envelope, SettlementRef
from . import bindings as _bindings
from . import dead_letters as _dead
from . import queue_ops as _ops
from .inserts import Inserts
from .url import sqlite_options
from .waiting import SAFETY_SECONDS, Waiting
from .writer import Op, Plain, Writer

__all__ = ["SqliteBroker"]

T = TypeVar("T")


class SqliteBroker:
    """Engine for ``sqlite:///``. See :class:`~..base.Broker` for the contract.

    ``safety_poll``: seconds between the engine's safety polls (:mod:`.waiting`)."""

    needs_bytes = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = SYSTEM_CLOCK,
        synchronous: str = "full",
        busy_timeout_ms: int = 5000,
        max_group: int = 512,
        safety_poll: float = SAFETY_SECONDS,
    ) -> None:
        self.path = Path(path)
        if synchronous.lower() not in ("full", "normal", "extra"):
            raise ConfigurationError("synchronous must be full, normal or extra")
        self._clock = clock
        self._inserts = Inserts()
        self._send_op = self._inserts.send
        self._writer = Writer(
            self.path,
            synchronous=synchronous.upper(),
            busy_ms=int(busy_timeout_ms),
            max_group=max_group,
            batch=self._inserts.insert_plain,
        )
        self._put = self._writer.ops.put
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        #: lock tokens: unique in this engine by the counter, among processes by the prefix
        self._token_prefix = os.urandom(6).hex() + "-"
        self._tokens = itertools.count(1)
        #: waiters, their wake-ups (here, from other processes, due times), the safety poll
        self.waiting = Waiting(self.path, clock, safety_seconds=safety_poll)

    @classmethod
    def from_url(cls, url: str, *, clock: Clock = SYSTEM_CLOCK) -> SqliteBroker:
        """Build from a ``sqlite:///`` URL."""
        path, synchronous, busy = sqlite_options(url)
        return cls(path, clock=clock, synchronous=synchronous, busy_timeout_ms=busy)

    # ---------------------------------------------------------------- the writer

    async def start(self) -> None:
        """Open the file (creating it and its folder) and start the worker thread."""
        if self._loop is not None:
            return
        if self._closed:
            raise BrokerClosedError("the sqlite engine is closed")
        loop = asyncio.get_running_loop()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BrokerUnavailableError(f"cannot create {self.path.parent}: {exc}") from exc
        self._loop = loop
        await self._writer.start(loop)
        self.waiting.start(loop)

    async def _call(self, fn: Callable[..., T], *args: Any, plain: Plain | None = None) -> T:
        """Run ``fn(conn, *args)`` on the writer thread, in the next group."""
        if self._closed:
            raise BrokerClosedError("the sqlite engine is closed")
        loop = self._loop
        if loop is None:
            await self.start()
            loop = self._loop
            assert loop is not None
        fut: asyncio.Future[T] = loop.create_future()
        self._put(Op(fn, args, fut, plain))
        return await fut

    def _notify(self, queues: Sequence[str]) -> None:
        self.waiting.changed(queues)

    # ---------------------------------------------------------------- queue operations

    async def send(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_depth: int | None = None,
        dedup_window: float = 0.0,
    ) -> list[bool]:
        """Enqueue atomically (one savepoint for the whole call)."""
        now = self._clock.now()
        # A missing body fails the batched insert (NOT NULL) and, re-run alone, gets
        # insert's error.
        plain: Plain | None = None
        if dedup_window <= 0 or all(e.dedup_key is None for e in envelopes):
            plain = (envelopes, now, max_depth)
        result = await self._call(
            self._send_op, envelopes, now, max_depth, dedup_window, plain=plain
        )
        self._notify(sorted({e.queue for e in envelopes}))
        return result

    async def receive(self, queue: str, max_messages: int, lock_seconds: float) -> list[Delivery]:
        """Lock and return available messages, priority then FIFO."""
        waiting = self.waiting
        if waiting.idle(queue):  # drained and not woken since: nothing to look for
            if self._closed:
                raise BrokerClosedError("the sqlite engine is closed")
            return []
        now = self._clock.now()
        token = f"{self._token_prefix}{next(self._tokens)}"
        generation = waiting.generation(queue)
        got, due = await self._call(_ops.receive, queue, max_messages, now, lock_seconds, token)
        waiting.received(queue, generation, len(got) < max_messages, due)
        return got

    async def ack(
        self,
        queue: str,
        settlements: Sequence[SettlementRef],
        *,
        processed_key: str | None = None,
        processed_ttl: float = 0.0,
        outbox: Sequence[Envelope] = (),
    ) -> list[bool]:
        """Delete settled messages; processed key and outbox in the same transaction."""
        now = self._clock.now()
        try:
            result = await self._call(
                _ops.ack, queue, settlements, now, processed_key, processed_ttl, outbox
            )
        except _ops.Rollback as rb:
            return rb.results
        results, empty = result
        if empty:  # nothing left, not even a lock to expire: no due time to wait for
            self.waiting.emptied(queue)
        if outbox:
            self._notify(sorted({e.queue for e in outbox}))
        return results

    async def release(
        self, queue: str, settlement: SettlementRef, *, delay: float = 0.0, error: str | None = None
    ) -> bool:
        """Unlock for redelivery after ``delay``."""
        now = self._clock.now()
        ok = await self._call(_ops.release, queue, settlement, now, delay, error)
        if ok:
            if delay > 0:
                self.waiting.later(queue, now + delay)
            else:
                self._notify([queue])
        return ok

    async def renew(
        self, queue: str, settlements: Sequence[SettlementRef], lock_seconds: float
    ) -> list[bool]:
        """Extend locks."""
        return await self._call(_ops.renew, queue, settlements, self._clock.now(), lock_seconds)

    async def depth(self, queue: str) -> int:
        """Live messages in the queue."""
        return await self._call(_ops.depth, queue)

    async def queues(self) -> list[str]:
        """Queues holding messages or dead letters."""
        return await self._call(_ops.queues)

    async def delete_queue(self, queue: str) -> None:
        """Drop the queue with its messages and dead letters."""
        await self._call(_ops.delete_queue, queue)
        self.waiting.forget(queue)

    async def is_processed(self, key: str) -> bool:
        """Whether the exactly-once key is recorded."""
        return await self._call(_ops.is_processed, key, self._clock.now())

    # ---------------------------------------------------------------- dead letters

    async def dead_letter(
        self, queue: str, settlement: SettlementRef, *, reason: str, error: str | None = None
    ) -> bool:
        """Move a locked message to the dead-letter table."""
        now = self._clock.now()
        return await self._call(
            _dead.dead_letter, queue, settlement.message_id, settlement.token, now, reason, error
        )

    async def put_dead_letter(
        self, envelope: Envelope, *, reason: str, error: str | None = None, attempts: int = 0
    ) -> bool:
        """Store the envelope straight in the dead-letter table (never deliverable)."""
        now = self._clock.now()
        return await self._call(_dead.put, envelope, now, reason, error, attempts)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Oldest first."""
        return await self._call(_dead.list_dead, queue, limit)

    async def resubmit(self, queue: str, message_id: str) -> bool:
        """Move a dead letter back into its queue."""
        ok = await self._call(_dead.resubmit, queue, message_id, self._clock.now())
        if ok:
            self._notify([queue])
        return ok

    async def purge_dead_letters(self, queue: str) -> int:
        """Delete the queue's dead letters."""
        return await self._call(_dead.purge, queue)

    async def dead_letter_depth(self, queue: str) -> int:
        """Dead letters of the queue."""
        return await self._call(_dead.count, queue)

    # ---------------------------------------------------------------- bindings

    async def bind(self, topic: str, queue: str) -> None:
        """Durable binding."""
        await self._call(_bindings.bind, topic, queue)

    async def unbind(self, topic: str, queue: str) -> None:
        """Remove a binding."""
        await self._call(_bindings.unbind, topic, queue)

    async def bindings(self, topic: str) -> list[str]:
        """Queues bound to the topic."""
        return await self._call(_bindings.bindings, topic)

    # ---------------------------------------------------------------- waiting, closing

    async def prepare(self, queue: str) -> None:
        """Open the file and the wake-up socket (the first receive then finds them ready)."""
        if self._closed:
            raise BrokerClosedError("the sqlite engine is closed")
        if self._loop is None:
            await self.start()

    async def wait(self, queue: str, timeout: float | None) -> None:
        """Return on a send or release to ``queue`` from this process or another on the file,
        at its next due time (read by the receive that drained it), on close, or after
        ``timeout`` seconds (None: none; the engine's one safety poll is the backstop)."""
        if self._closed:
            raise BrokerClosedError("the sqlite engine is closed")
        if self._loop is None:
            await self.start()
        await self.waiting.wait(queue, timeout)

    async def close(self) -> None:
        """Finish queued operations, stop the thread, close the file."""
        if self._closed:
            return
        self._closed = True
        await self.waiting.close()
        await self._writer.stop()
