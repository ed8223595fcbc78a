"""The engine's one database thread and its group commit.

Every operation is a function of the connection, queued as an :class:`Op`. The thread takes
all operations queued while the last transaction committed (up to ``max_group``) and runs
them in one ``BEGIN IMMEDIATE`` ... ``COMMIT``: fifty concurrent publishers share one
``fsync``. Consecutive plain sends (no dedup keys) are inserted by one statement (the
``batch`` function). The group is run optimistically in one go; when an operation fails, the
group is undone and run again with each operation in its own savepoint, so only that one
fails. Results and errors go back to the event loop in one callback per group.
"""

from __future__ import annotations

import asyncio
import itertools
import queue as queue_mod
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from ...errors import BrokerError, BrokerUnavailableError, MessagingError
from ..base import Envelope
from .schema import connect, with_retry

__all__ = ["Batch", "Op", "Plain", "Writer"]

Plain = tuple[Sequence[Envelope], float, "int | None"]
"""A send that may be batched with its neighbours: (envelopes, now, max_depth)."""


class Op:
    """One queued database operation: ``fn(conn, *args)``, answered through ``future``."""

    __slots__ = ("args", "error", "fn", "future", "plain", "result")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        future: asyncio.Future[Any],
        plain: Plain | None = None,
    ):
        self.fn = fn
        self.args = args
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None
        #: set for a send without dedup keys; consecutive ones are inserted together by the
        #: writer's ``batch`` function
        self.plain = plain


Batch = Callable[[sqlite3.Connection, Sequence[Op]], None]
"""Inserts consecutive plain sends together, setting each op's result; raises on any
failure (the group is then re-run op by op)."""


class Writer:
    """The thread that owns the connection and commits operations in groups."""

    def __init__(
        self, path: Path, *, synchronous: str, busy_ms: int, max_group: int, batch: Batch
    ) -> None:
        self.path = path
        self._sync = synchronous
        self._busy_ms = busy_ms
        self._max_group = max_group
        self._batch = batch
        #: operations for the thread; ``None`` tells it to stop
        self.ops: queue_mod.SimpleQueue[Op | None] = queue_mod.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread; return once the file is open (or raise why it cannot be)."""
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready), name=f"aos-sqlite:{self.path.name}", daemon=True
        )
        self._thread.start()
        await ready

    async def stop(self) -> None:
        """Let the thread finish the operations queued so far, then join it."""
        thread = self._thread
        if thread is not None:
            self.ops.put(None)
            await asyncio.to_thread(thread.join)

    def _open(
        self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]
    ) -> sqlite3.Connection | None:
        """Open the file, reporting the outcome to ``ready`` (on the loop)."""
        try:
            conn = connect(self.path, self._sync, self._busy_ms)
        except BaseException as exc:  # reported to start()
            err = (
                exc
                if isinstance(exc, MessagingError)
                else BrokerUnavailableError(f"cannot open {self.path}: {exc}")
            )
            if err is not exc:
                err.__cause__ = exc
            loop.call_soon_threadsafe(set_exception, ready, err)
            return None
        loop.call_soon_threadsafe(set_result, ready, None)
        return conn

    def _run(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        conn = self._open(loop, ready)
        if conn is None:
            return
        ops = self.ops
        try:
            while True:
                first = ops.get()
                if first is None:
                    break
                group = [first]
                stop = False
                while len(group) < self._max_group:
                    try:
                        nxt = ops.get_nowait()
                    except queue_mod.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    group.append(nxt)
                self._execute(conn, group)
                loop.call_soon_threadsafe(_resolve_group, group)
                if stop:
                    break
        finally:
            conn.close()

    def _begin(self, conn: sqlite3.Connection, group: list[Op]) -> bool:
        """Start the group's write transaction; on failure fail every op of it."""
        try:
            with_retry(lambda: conn.execute("BEGIN IMMEDIATE"), self._busy_ms)
            return True
        except sqlite3.Error as exc:
            busy = BrokerUnavailableError(f"sqlite database {self.path} is busy: {exc}")
            busy.__cause__ = exc
            for op in group:
                op.error = busy
            return False

    def _execute(self, conn: sqlite3.Connection, group: list[Op]) -> None:
        if not self._begin(conn, group):
            return
        # Optimistic: run the whole group in one go; ops almost never fail. When one does,
        # undo the group and run each op in its own savepoint so only that op fails.
        try:
            for plain, run in itertools.groupby(group, key=_is_plain):
                ops = list(run)
                if plain and len(ops) > 1:
                    self._batch(conn, ops)
                    continue
                for op in ops:
                    op.result = op.fn(conn, *op.args)
        except BaseException:
            conn.execute("ROLLBACK")
            if not self._begin(conn, group):
                return
            _one_by_one(conn, group)
        self._commit(conn, group)

    def _commit(self, conn: sqlite3.Connection, group: list[Op]) -> None:
        try:
            with_retry(lambda: conn.execute("COMMIT"), self._busy_ms)
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = BrokerError(f"sqlite commit failed: {exc}")
            err.__cause__ = exc
            for op in group:
                op.error = err
                op.result = None


def _is_plain(op: Op) -> bool:
    return op.plain is not None


def _one_by_one(conn: sqlite3.Connection, group: list[Op]) -> None:
    """Run each op in its own savepoint: a failing one is undone alone and gets our error."""
    for op in group:
        op.result = None
        try:
            conn.execute("SAVEPOINT op")
            op.result = op.fn(conn, *op.args)
            conn.execute("RELEASE op")
        except BaseException as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            if isinstance(exc, MessagingError):
                op.error = exc
            else:
                failed = BrokerError(f"sqlite engine error: {exc}")
                failed.__cause__ = exc
                op.error = failed


def set_result(fut: asyncio.Future[Any], value: Any) -> None:
    """Resolve ``fut`` unless it is done (cancelled) already."""
    if not fut.done():
        fut.set_result(value)


def set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``fut`` unless it is done (cancelled) already."""
    if not fut.done():
        fut.set_exception(exc)


def _resolve_group(group: list[Op]) -> None:
    for op in group:
        if op.future.done():
            continue
        if op.error is not None:
            op.future.set_exception(op.error)
        else:
            op.future.set_result(op.result)
