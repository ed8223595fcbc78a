"""The embedded durable engine (``sqlite:///path/to.db``).

One SQLite file in WAL mode. All database work runs on one worker thread per broker, never on
the event loop. Operations queue up while a transaction commits and are then executed
together in the next one (group commit): fifty concurrent publishers share one ``fsync``.
Each operation runs inside its own savepoint, so one failing operation does not undo the
others of its group. Writers take ``BEGIN IMMEDIATE`` with a busy timeout, and a busy
database is retried with backoff, so several processes can share one file without
"database is locked" reaching a user.

URL options: ``?synchronous=full|normal`` (default ``full``: a committed publish survives a
power loss; ``normal`` survives a process crash), ``busy_timeout_ms`` (default 5000).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue as queue_mod
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar
from urllib.parse import parse_qs, unquote, urlparse

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    BrokerClosedError,
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    DuplicateMessageError,
    MessagingError,
    QueueFullError,
)
from ..policy import DEFAULT_OPTIONS
from .base import DeadLetter, Delivery, Envelope, SettlementRef

__all__ = ["SqliteBroker", "parse_sqlite_url"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body BLOB NOT NULL,
    visible_at REAL NOT NULL,
    expires_at REAL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    token TEXT,
    last_error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_queue_id ON messages(queue, id);
CREATE INDEX IF NOT EXISTS messages_order ON messages(queue, priority, seq);
CREATE TABLE IF NOT EXISTS depths (queue TEXT PRIMARY KEY, depth INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    dseq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    dead_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS dead_queue_id ON dead_letters(queue, id);
CREATE TABLE IF NOT EXISTS dedup (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS processed (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
    topic TEXT NOT NULL, queue TEXT NOT NULL, PRIMARY KEY (topic, queue)
);
"""


def parse_sqlite_url(url: str) -> tuple[Path, dict[str, str]]:
    """Split ``sqlite:///relative.db`` / ``sqlite:////abs.db?opt=v`` into path and options."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    raw = unquote(parsed.path)
    if parsed.netloc:
        raise ConfigurationError(
            f"sqlite URL {url!r} has a host; use sqlite:///relative.db or sqlite:////abs.db"
        )
    if not raw or raw == "/":
        raise ConfigurationError(f"sqlite URL {url!r} names no file")
    path = Path(raw[1:])  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
    options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    return path, options


_Plain = tuple[Sequence[Envelope], float, "int | None"]


class _Op:
    __slots__ = ("args", "error", "fn", "future", "plain", "result")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        future: asyncio.Future[Any],
        plain: _Plain | None = None,
    ):
        self.fn = fn
        self.args = args
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None
        #: set for a send without dedup keys: (envelopes, now, max_depth); consecutive ones
        #: are inserted together (see ``SqliteBroker._insert_plain``)
        self.plain = plain


class SqliteBroker:
    """Engine for ``sqlite:///``. See :class:`~.base.Broker` for the contract."""

    needs_bytes = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = SYSTEM_CLOCK,
        synchronous: str = "full",
        busy_timeout_ms: int = 5000,
        max_group: int = 512,
    ) -> None:
        self.path = Path(path)
        if synchronous.lower() not in ("full", "normal", "extra"):
            raise ConfigurationError("synchronous must be full, normal or extra")
        self._sync = synchronous.upper()
        self._busy_ms = int(busy_timeout_ms)
        self._clock = clock
        self._max_group = max_group
        self._ops: queue_mod.SimpleQueue[_Op | None] = queue_mod.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._last_sweep = 0.0

    @classmethod
    def from_url(cls, url: str, *, clock: Clock = SYSTEM_CLOCK) -> SqliteBroker:
        """Build from a ``sqlite:///`` URL."""
        path, options = parse_sqlite_url(url)
        unknown = set(options) - {"synchronous", "busy_timeout_ms"}
        if unknown:
            raise ConfigurationError(f"unknown sqlite URL options {sorted(unknown)}")
        try:
            busy = int(options.get("busy_timeout_ms", "5000"))
        except ValueError as exc:
            raise ConfigurationError("busy_timeout_ms must be an integer") from exc
        return cls(
            path, clock=clock, synchronous=options.get("synchronous", "full"), busy_timeout_ms=busy
        )

    # ---------------------------------------------------------------- worker thread

    async def start(self) -> None:
        """Open the file (creating it and its folder) and start the worker thread."""
        if self._thread is not None:
            return
        if self._closed:
            raise BrokerClosedError("the sqlite engine is closed")
        self._loop = asyncio.get_running_loop()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BrokerUnavailableError(f"cannot create {self.path.parent}: {exc}") from exc
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"aos-sqlite:{self.path.name}", daemon=True
        )
        self._thread.start()
        await ready

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=True)
        conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BrokerError(f"could not switch {self.path} to WAL mode (got {mode})")
        conn.execute(f"PRAGMA synchronous={self._sync}")
        conn.execute("PRAGMA foreign_keys=OFF")
        self._with_retry(conn, lambda: conn.executescript(_SCHEMA))
        return conn

    def _with_retry(self, conn: sqlite3.Connection, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + max(30.0, self._busy_ms / 1000 * 4)
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
        except BaseException as exc:  # reported to start()
            err = (
                exc
                if isinstance(exc, MessagingError)
                else BrokerUnavailableError(f"cannot open {self.path}: {exc}")
            )
            if err is not exc:
                err.__cause__ = exc
            loop.call_soon_threadsafe(_set_exc, ready, err)
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        try:
            while True:
                first = self._ops.get()
                if first is None:
                    break
                group = [first]
                stop = False
                while len(group) < self._max_group:
                    try:
                        nxt = self._ops.get_nowait()
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

    def _begin(self, conn: sqlite3.Connection, group: list[_Op]) -> bool:
        """Start the group's write transaction; on failure fail every op of it."""
        try:
            self._with_retry(conn, lambda: conn.execute("BEGIN IMMEDIATE"))
            return True
        except sqlite3.Error as exc:
            busy = BrokerUnavailableError(f"sqlite database {self.path} is busy: {exc}")
            busy.__cause__ = exc
            for op in group:
                op.error = busy
            return False

    def _execute(self, conn: sqlite3.Connection, group: list[_Op]) -> None:
        if not self._begin(conn, group):
            return
        # Optimistic: run the whole group in one go; ops almost never fail. When one does,
        # undo the group and run each op in its own savepoint so only that op fails.
        try:
            for plain, run in itertools.groupby(group, key=lambda op: op.plain is not None):
                ops = list(run)
                if plain and len(ops) > 1:
                    self._insert_plain(conn, ops)
                    continue
                for op in ops:
                    op.result = op.fn(conn, *op.args)
        except BaseException:
            conn.execute("ROLLBACK")
            if not self._begin(conn, group):
                return
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
        try:
            self._with_retry(conn, lambda: conn.execute("COMMIT"))
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

    async def _call(self, fn: Callable[..., T], *args: Any, plain: _Plain | None = None) -> T:
        if self._closed:
            raise BrokerClosedError("the sqlite engine is closed")
        if self._thread is None:
            await self.start()
        assert self._loop is not None
        fut: asyncio.Future[T] = self._loop.create_future()
        self._ops.put(_Op(fn, args, fut, plain))
        return await fut

    # ---------------------------------------------------------------- operations

    def _notify(self, queues: Sequence[str]) -> None:
        for name in queues:
            waiters = self._waiters.pop(name, None)
            if waiters:
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(None)

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        envelopes: Sequence[Envelope],
        now: float,
        max_depth: int | None,
        dedup_window: float,
    ) -> list[bool]:
        results: list[bool] = []
        added: dict[str, int] = {}
        for env in envelopes:
            if env.body is None:
                raise BrokerError("the sqlite engine needs encoded envelopes (body)")
            key = env.dedup_key
            if key is not None and dedup_window > 0:
                row = conn.execute("SELECT expires_at FROM dedup WHERE key=?", (key,)).fetchone()
                if row is not None and row[0] > now:
                    results.append(False)
                    continue
                conn.execute(
                    "INSERT OR REPLACE INTO dedup(key, expires_at) VALUES (?, ?)",
                    (key, now + dedup_window),
                )
            try:
                conn.execute(_INSERT, _row(env, now))
            except sqlite3.IntegrityError as exc:
                raise DuplicateMessageError(
                    f"message {env.message_id} is already in queue {env.queue!r}"
                ) from exc
            added[env.queue] = added.get(env.queue, 0) + 1
            results.append(True)
        for name, n in added.items():
            _add_depth(conn, name, n, max_depth)
        return results

    def _insert_plain(self, conn: sqlite3.Connection, ops: Sequence[_Op]) -> None:
        """Consecutive sends without dedup keys in one statement, each queue's depth updated
        and checked once. Any failure (a duplicate id, a full queue) raises, and the group is
        then re-run op by op, each in its own savepoint, so each send gets its own result."""
        rows: list[tuple[Any, ...]] = []
        added: dict[str, int] = {}
        limits: dict[str, int] = {}
        for op in ops:
            assert op.plain is not None
            envelopes, now, max_depth = op.plain
            self._sweep(conn, now)
            for env in envelopes:
                q = env.queue
                rows.append(_row(env, now))
                added[q] = added.get(q, 0) + 1
                if max_depth is not None:
                    limits[q] = min(limits.get(q, max_depth), max_depth)
            op.result = [True] * len(envelopes)
        conn.executemany(_INSERT, rows)
        for name, count in added.items():
            _add_depth(conn, name, count, limits.get(name))

    def _sweep(self, conn: sqlite3.Connection, now: float) -> None:
        if now - self._last_sweep >= 30.0:
            self._last_sweep = now
            conn.execute("DELETE FROM dedup WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM processed WHERE expires_at <= ?", (now,))

    async def send(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_depth: int | None = None,
        dedup_window: float = 0.0,
    ) -> list[bool]:
        """Enqueue atomically (one savepoint for the whole call)."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> list[bool]:
            self._sweep(conn, now)
            return self._insert(conn, envelopes, now, max_depth, dedup_window)

        # A missing body fails the batched insert (NOT NULL) and, re-run alone, gets
        # _insert's error.
        plain: _Plain | None = None
        if dedup_window <= 0 or all(e.dedup_key is None for e in envelopes):
            plain = (envelopes, now, max_depth)
        result = await self._call(op, plain=plain)
        self._notify(sorted({e.queue for e in envelopes}))
        return result

    async def receive(self, queue: str, max_messages: int, lock_seconds: float) -> list[Delivery]:
        """Lock and return available messages, priority then FIFO."""
        now = self._clock.now()
        token = os.urandom(8).hex()

        def op(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                "SELECT seq, id, priority, body, attempts, enqueued_at, expires_at, last_error"
                " FROM messages WHERE queue=? AND visible_at<=? ORDER BY priority, seq LIMIT ?",
                (queue, now, max_messages),
            ).fetchall()
            if not rows:
                return []
            conn.executemany(
                "UPDATE messages SET visible_at=?, attempts=attempts+1, token=? WHERE seq=?",
                [(now + lock_seconds, token, r[0]) for r in rows],
            )
            return [
                Delivery(
                    queue,
                    r[1],
                    token,
                    r[4] + 1,
                    r[2],
                    r[5],
                    r[6],
                    bytes(r[3]),
                    None,
                    DEFAULT_OPTIONS,
                    r[7],
                )
                for r in rows
            ]

        return await self._call(op)

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

        def op(conn: sqlite3.Connection) -> list[bool]:
            out: list[bool] = []
            for s in settlements:
                cur = conn.execute(
                    "DELETE FROM messages WHERE queue=? AND id=? AND token=? AND visible_at>?",
                    (queue, s.message_id, s.token, now),
                )
                out.append(cur.rowcount == 1)
            removed = sum(out)
            if removed:
                conn.execute("UPDATE depths SET depth = depth - ? WHERE queue=?", (removed, queue))
            if processed_key is not None:
                if not all(out):
                    raise _Rollback(out)
                conn.execute(
                    "INSERT OR REPLACE INTO processed(key, expires_at) VALUES (?, ?)",
                    (processed_key, now + max(processed_ttl, 0.0)),
                )
                if outbox:
                    self._insert(conn, outbox, now, None, 0.0)
            return out

        try:
            result = await self._call(op)
        except _Rollback as rb:
            return rb.results
        if outbox:
            self._notify(sorted({e.queue for e in outbox}))
        return result

    async def release(
        self, queue: str, settlement: SettlementRef, *, delay: float = 0.0, error: str | None = None
    ) -> bool:
        """Unlock for redelivery after ``delay``."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE messages SET visible_at=?, token=NULL, last_error=? "
                "WHERE queue=? AND id=? AND token=? AND visible_at>?",
                (now + max(delay, 0.0), error, queue, settlement.message_id, settlement.token, now),
            )
            return cur.rowcount == 1

        ok = await self._call(op)
        if ok and delay <= 0:
            self._notify([queue])
        return ok

    async def renew(
        self, queue: str, settlements: Sequence[SettlementRef], lock_seconds: float
    ) -> list[bool]:
        """Extend locks."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> list[bool]:
            return [
                conn.execute(
                    "UPDATE messages SET visible_at=? WHERE queue=? AND id=? AND token=?"
                    " AND visible_at>?",
                    (now + lock_seconds, queue, s.message_id, s.token, now),
                ).rowcount
                == 1
                for s in settlements
            ]

        return await self._call(op)

    async def dead_letter(
        self, queue: str, settlement: SettlementRef, *, reason: str, error: str | None = None
    ) -> bool:
        """Move a locked message to the dead-letter table."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT seq, priority, body, attempts, enqueued_at FROM messages"
                " WHERE queue=? AND id=? AND token=? AND visible_at>?",
                (queue, settlement.message_id, settlement.token, now),
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM messages WHERE seq=?", (row[0],))
            conn.execute("UPDATE depths SET depth = depth - 1 WHERE queue=?", (queue,))
            conn.execute(
                "DELETE FROM dead_letters WHERE queue=? AND id=?", (queue, settlement.message_id)
            )
            conn.execute(
                "INSERT INTO dead_letters(queue, id, priority, body, reason, error, attempts,"
                " enqueued_at, dead_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (queue, settlement.message_id, row[1], row[2], reason, error, row[3], row[4], now),
            )
            return True

        return await self._call(op)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Oldest first."""

        def op(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT id, priority, body, reason, error, attempts, enqueued_at, dead_at"
                " FROM dead_letters WHERE queue=? ORDER BY dseq LIMIT ?",
                (queue, max(0, limit)),
            ).fetchall()
            return [
                DeadLetter(
                    queue,
                    r[0],
                    r[1],
                    bytes(r[2]),
                    None,
                    DEFAULT_OPTIONS,
                    r[3],
                    r[4],
                    r[5],
                    r[6],
                    r[7],
                )
                for r in rows
            ]

        return await self._call(op)

    async def resubmit(self, queue: str, message_id: str) -> bool:
        """Move a dead letter back into its queue."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT dseq, priority, body FROM dead_letters WHERE queue=? AND id=?",
                (queue, message_id),
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM dead_letters WHERE dseq=?", (row[0],))
            self._insert(
                conn,
                [Envelope(queue, message_id, row[1], bytes(row[2]), available_at=now)],
                now,
                None,
                0.0,
            )
            return True

        ok = await self._call(op)
        if ok:
            self._notify([queue])
        return ok

    async def purge_dead_letters(self, queue: str) -> int:
        """Delete the queue's dead letters."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM dead_letters WHERE queue=?", (queue,)).rowcount

        return await self._call(op)

    async def depth(self, queue: str) -> int:
        """Live messages in the queue."""

        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT depth FROM depths WHERE queue=?", (queue,)).fetchone()
            return int(row[0]) if row else 0

        return await self._call(op)

    async def dead_letter_depth(self, queue: str) -> int:
        """Dead letters of the queue."""

        def op(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute(
                    "SELECT COUNT(*) FROM dead_letters WHERE queue=?", (queue,)
                ).fetchone()[0]
            )

        return await self._call(op)

    async def queues(self) -> list[str]:
        """Queues holding messages or dead letters."""

        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT queue FROM depths WHERE depth > 0"
                " UNION SELECT DISTINCT queue FROM dead_letters ORDER BY 1"
            ).fetchall()
            return [r[0] for r in rows]

        return await self._call(op)

    async def delete_queue(self, queue: str) -> None:
        """Drop the queue with its messages and dead letters."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM messages WHERE queue=?", (queue,))
            conn.execute("DELETE FROM dead_letters WHERE queue=?", (queue,))
            conn.execute("DELETE FROM depths WHERE queue=?", (queue,))

        await self._call(op)
        self._notify([queue])

    async def is_processed(self, key: str) -> bool:
        """Whether the exactly-once key is recorded."""
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT expires_at FROM processed WHERE key=?", (key,)).fetchone()
            return row is not None and row[0] > now

        return await self._call(op)

    async def bind(self, topic: str, queue: str) -> None:
        """Durable binding."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO bindings(topic, queue) VALUES (?, ?)", (topic, queue)
            )

        await self._call(op)

    async def unbind(self, topic: str, queue: str) -> None:
        """Remove a binding."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM bindings WHERE topic=? AND queue=?", (topic, queue))

        await self._call(op)

    async def bindings(self, topic: str) -> list[str]:
        """Queues bound to the topic."""

        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT queue FROM bindings WHERE topic=? ORDER BY rowid", (topic,)
            ).fetchall()
            return [r[0] for r in rows]

        return await self._call(op)

    async def wait(self, queue: str, timeout: float) -> None:
        """Wake on a publish from this process, else after ``timeout`` (other processes are
        seen by the caller's next poll)."""
        if self._closed:
            raise BrokerClosedError("the sqlite engine is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(queue, set()).add(fut)
        handle = loop.call_later(max(0.0, timeout), _set_result, fut, None)
        try:
            await fut
        finally:
            handle.cancel()
            waiters = self._waiters.get(queue)
            if waiters is not None:
                waiters.discard(fut)

    async def close(self) -> None:
        """Finish queued operations, stop the thread, close the file."""
        if self._closed:
            return
        self._closed = True
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()
        thread = self._thread
        if thread is not None:
            self._ops.put(None)
            await asyncio.to_thread(thread.join)


_INSERT = (
    "INSERT INTO messages(queue, id, priority, body, visible_at, expires_at, enqueued_at)"
    " VALUES (?,?,?,?,?,?,?)"
)


def _row(env: Envelope, now: float) -> tuple[Any, ...]:
    return (
        env.queue,
        env.message_id,
        env.priority,
        env.body,
        env.available_at,
        env.expires_at,
        now,
    )


def _add_depth(conn: sqlite3.Connection, queue: str, added: int, limit: int | None) -> None:
    """Count ``added`` messages into the queue's depth; over ``limit``, refuse them all."""
    conn.execute(
        "INSERT INTO depths(queue, depth) VALUES (?, ?) "
        "ON CONFLICT(queue) DO UPDATE SET depth = depth + excluded.depth",
        (queue, added),
    )
    if limit is not None:
        depth = conn.execute("SELECT depth FROM depths WHERE queue=?", (queue,)).fetchone()[0]
        if depth > limit:
            raise QueueFullError(f"queue {queue!r} is full ({limit} messages); publish refused")


class _Rollback(MessagingError):
    """Internal: undo an ack whose locks were lost, reporting per-settlement results."""

    def __init__(self, results: list[bool]) -> None:
        super().__init__("lock lost")
        self.results = results


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exc(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _resolve_group(group: list[_Op]) -> None:
    for op in group:
        if op.future.done():
            continue
        if op.error is not None:
            op.future.set_exception(op.error)
        else:
            op.future.set_result(op.result)
