"""What :meth:`SqliteBroker.wait` waits on: wake-ups from this process, from the other
processes on the file, and from due times, plus one slow safety poll for the engine.

* **This process**: a send, release or resubmit wakes the queue's waiters when its
  transaction commits (:meth:`Waiting.changed`).
* **Other processes**: the same call tells the peers on the file (:mod:`.peers`, unix
  datagram sockets), which wake their waiters of those queues at once.
* **Due times**: a receive that drains a queue also reads the earliest ``visible_at`` left in
  it (a delay or backoff ending, a lock expiring, whichever process set it); a wait on the
  queue sets that time in the engine's one timer (:class:`~..wakeups.Wakeups`).
* **Safety poll**: every :data:`SAFETY_SECONDS` of real time one task asks the file, on a
  read connection of its own, whether anyone committed since the last look (``PRAGMA
  data_version``); only then does it read, in one query per 500 waiting queues, the
  earliest ``visible_at`` of each, waking those holding something receivable and setting
  the others' due times in the timer (and no receive skips the database on an older look).
  It catches a datagram that was lost (a full buffer) and covers platforms without unix
  sockets. An idle engine with a thousand waiting queues runs one pragma every few seconds.

A receive notes the queue's wake-up generation when it starts; a wait after it returns at
once when the queue was woken meanwhile (a wake-up between the two is never lost). The same
note lets a receive skip the database (:meth:`Waiting.idle`): after a receive that drained
the queue, nothing can have become receivable until the queue is woken or its due time
comes, so the consumer's next look costs no query.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Sequence

from ...clock import Clock
from ..wakeups import Wakeups
from .peers import WAKE_ALL, Peers

__all__ = ["SAFETY_SECONDS", "Waiting"]

log = logging.getLogger("aos.messaging.sqlite")

#: Seconds between two safety polls of one engine (real time).
SAFETY_SECONDS = 2.0
_CHUNK = 500


class Waiting:
    """The engine's waiters, their wake-ups and the safety poll (see the module docstring)."""

    def __init__(self, path: Path, clock: Clock, *, safety_seconds: float = SAFETY_SECONDS):
        self._path = path
        self._clock = clock
        self._safety = safety_seconds
        self.wakeups = Wakeups(clock, f"aos-sqlite-timer:{path.name}", on_due=self._due_came)
        self.peers = Peers(path, self._from_peers)
        #: wake-up generation of each queue this engine has received from
        self._gen: dict[str, int] = {}
        #: per queue: (generation when the last receive started, whether it drained the
        #: queue, the next due time it read)
        self._seen: dict[str, tuple[int, bool, float | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._reader: sqlite3.Connection | None = None
        self._version: int | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the wake-up socket and start the safety poll."""
        if self._task is not None:
            return
        self.peers.start(loop)
        self._task = loop.create_task(self._poll(), name=f"aos-sqlite-safety:{self._path.name}")

    # ---------------------------------------------------------------- receive / wait

    def generation(self, queue: str) -> int:
        """The queue's wake-up count, noted by a receive before it starts."""
        return self._gen.setdefault(queue, 0)

    def received(self, queue: str, generation: int, drained: bool, due: float | None) -> None:
        """A receive that started at ``generation`` finished; ``drained``: it left nothing
        receivable; ``due`` is then the queue's next due time (None: nothing left)."""
        self._seen[queue] = (generation, drained, due)

    def emptied(self, queue: str) -> None:
        """An ack here left ``queue`` empty: the due time its last receive read (the lock
        of what was just acked) is gone."""
        seen = self._seen.get(queue)
        if seen is not None and seen[1]:
            self._seen[queue] = (seen[0], True, None)

    def idle(self, queue: str) -> bool:
        """True when a receive now would find nothing: the last one drained the queue, it
        was not woken since, and its due time has not come."""
        seen = self._seen.get(queue)
        if seen is None or not seen[1] or self._gen.get(queue, 0) != seen[0]:
            return False
        due = seen[2]
        return due is None or due > self._clock.now()

    async def wait(self, queue: str, timeout: float | None) -> None:
        """Park until the queue is woken, its next due time, close, or ``timeout``."""
        seen = self._seen.get(queue)
        if seen is not None:
            generation, _drained, due = seen
            if self._gen.get(queue, 0) != generation:
                return  # woken since the last receive started: look again
            if due is not None:
                if due <= self._clock.now():
                    return
                self.wakeups.at(queue, due)
        await self.wakeups.wait(queue, timeout)

    # ---------------------------------------------------------------- wake-ups

    def changed(self, queues: Sequence[str]) -> None:
        """These queues may have something receivable (committed here): wake their waiters
        here and tell the peers."""
        self._wake(queues)
        self.peers.send(list(queues))

    def later(self, queue: str, due: float) -> None:
        """Something of ``queue`` becomes receivable at ``due`` (a release with a delay,
        committed here): note it, set it in the timer, and tell the peers so they look."""
        seen = self._seen.get(queue)
        if seen is not None and seen[1] and (seen[2] is None or due < seen[2]):
            self._seen[queue] = (seen[0], True, due)
        if self.wakeups.waiting(queue):
            self.wakeups.at(queue, due)
        self.peers.send([queue])

    def forget(self, queue: str) -> None:
        """The queue was deleted: wake its waiters, drop what is kept for it."""
        self._wake([queue])
        self._seen.pop(queue, None)
        self._gen.pop(queue, None)
        self.peers.send([queue])

    def _wake(self, queues: Sequence[str]) -> None:
        gen = self._gen
        for queue in queues:
            if queue in gen:
                gen[queue] += 1
            self.wakeups.notify(queue)

    def _due_came(self, queue: str) -> None:
        """The timer: a due time of ``queue`` came (a wake-up like any other)."""
        self._wake([queue])

    def _from_peers(self, queues: list[str]) -> None:
        if WAKE_ALL in queues:
            self._wake(list(self._gen))
            self.wakeups.notify_all()
            return
        self._wake(queues)

    # ---------------------------------------------------------------- safety poll

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._safety)
            self.peers.refresh()
            try:
                if not await asyncio.to_thread(self._changed):
                    continue
                now = self._clock.now()
                dues = await asyncio.to_thread(self._look, self.wakeups.waiting_queues)
            except sqlite3.Error as exc:
                log.warning("sqlite safety poll of %s failed: %s", self._path, exc)
                continue
            # someone committed: no receive may skip the database on an older look (a new
            # generation, without waking the parked waiters: the look below covers those)
            gen = self._gen
            for queue in gen:
                gen[queue] += 1
            for queue, due in dues:
                if due <= now:
                    self._wake([queue])
                else:
                    self.wakeups.at(queue, due)

    def _connection(self) -> sqlite3.Connection:
        conn = self._reader
        if conn is None:
            conn = self._reader = sqlite3.connect(
                str(self._path), isolation_level=None, check_same_thread=False
            )
        return conn

    def _changed(self) -> bool:
        """(Worker thread) Whether anyone committed since the last look."""
        version = int(self._connection().execute("PRAGMA data_version").fetchone()[0])
        if version == self._version:
            return False
        self._version = version
        return True

    def _look(self, waiting: list[str]) -> list[tuple[str, float]]:
        """(Worker thread) The earliest ``visible_at`` of each waiting queue that holds
        messages."""
        conn = self._connection()
        dues: list[tuple[str, float]] = []
        for i in range(0, len(waiting), _CHUNK):
            chunk = waiting[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT queue, MIN(visible_at) FROM messages WHERE queue IN ({marks})"
                " GROUP BY queue",
                chunk,
            ).fetchall()
            dues.extend((r[0], float(r[1])) for r in rows)
        return dues

    async def close(self) -> None:
        """Stop the safety poll, close the socket, wake every waiter."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.peers.close()
        await self.wakeups.close()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await asyncio.to_thread(reader.close)
