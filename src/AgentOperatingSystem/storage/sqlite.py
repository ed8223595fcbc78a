"""The SQLite storage engine (``sqlite:///path/to.db``).

One connection per manager, used only by one dedicated worker thread, so no SQLite call ever
runs on the event loop and the operations of one manager are serialised. Several processes
(or several managers) may share one file:

- the database runs in WAL mode, so readers never block the writer and vice versa;
- every write is one ``BEGIN IMMEDIATE`` transaction, which takes the write lock up front
  (a deferred transaction that upgrades from read to write can fail with ``SQLITE_BUSY``
  without waiting); ``update``'s read-modify-write and ``append``'s "next sequence number"
  both happen inside it, so no update is lost and no sequence number is given twice;
- lock waits use SQLite's busy timeout, and on top of it a ``database is locked`` /
  ``busy`` error at the start of a transaction or during a read is retried with backoff until
  the timeout, so it does not surface to users under ordinary contention.

Any other ``sqlite3`` error becomes :class:`StorageError` (``raise ... from exc``).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from ..messaging.errors import ConfigurationError, StorageError
from .base import KeyRows, LogRows, TextUpdater

__all__ = ["SQLiteStorageBackend", "path_from_url"]

T = TypeVar("T")
_Row = tuple[Any, ...]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS aos_kv (
        ns TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (ns, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS aos_log (
        ns TEXT NOT NULL,
        stream TEXT NOT NULL,
        seq INTEGER NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (ns, stream, seq)
    ) WITHOUT ROWID""",
)

_SELECT_VALUE = "SELECT value FROM aos_kv WHERE ns = ? AND key = ?"
_UPSERT = (
    "INSERT INTO aos_kv (ns, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value"
)


def path_from_url(url: str) -> str:
    """Return the file path of a ``sqlite:///...`` URL.

    ``sqlite:///data/aos.db`` is the relative path ``data/aos.db``; ``sqlite:////tmp/x.db``
    the absolute path ``/tmp/x.db``; ``sqlite:///:memory:`` a private in-memory database.
    """
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise ConfigurationError(
            f"invalid SQLite URL {url!r}: expected 'sqlite:///relative/path.db' or "
            "'sqlite:////absolute/path.db'"
        )
    path = url[len(prefix) :]
    if not path:
        raise ConfigurationError(f"the SQLite URL {url!r} names no file")
    return path


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SQLiteStorageBackend:
    """A :class:`~.manager.StorageBackend` on a SQLite file, safe to share between processes.

    ``busy_timeout`` (seconds) is how long a call waits for another writer's lock before it
    gives up with :class:`StorageError`.
    """

    def __init__(self, path: str, *, busy_timeout: float = 30.0) -> None:
        if not isinstance(path, str) or not path:
            raise ConfigurationError("the SQLite path must be a non-empty string")
        if busy_timeout <= 0:
            raise ConfigurationError("busy_timeout must be positive")
        self.path = path
        self.busy_timeout = float(busy_timeout)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def from_url(cls, url: str) -> SQLiteStorageBackend:
        """Build the backend for a ``sqlite:///...`` URL (no I/O happens here)."""
        return cls(path_from_url(url))

    def __repr__(self) -> str:
        return f"<SQLiteStorageBackend {self.path!r}>"

    # -- the worker thread -------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise StorageError(f"the SQLite store {self.path!r} is not open")

        def job() -> T:
            conn = self._conn
            if conn is None:
                raise StorageError(f"the SQLite store {self.path!r} is not open")
            return fn(conn)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, job)

    def _retrying(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action``, retrying while SQLite reports a lock, up to ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.002
        while True:
            try:
                return action()
            except sqlite3.Error as exc:
                if _is_busy(exc) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
                    continue
                raise StorageError(f"SQLite {what} failed on {self.path!r}: {exc}") from exc

    def _read(
        self, what: str, fn: Callable[[sqlite3.Connection], T]
    ) -> Callable[[sqlite3.Connection], T]:
        def job(conn: sqlite3.Connection) -> T:
            return self._retrying(what, lambda: fn(conn))

        return job

    def _write(
        self, what: str, fn: Callable[[sqlite3.Connection], T]
    ) -> Callable[[sqlite3.Connection], T]:
        """Wrap ``fn`` in one ``BEGIN IMMEDIATE`` transaction.

        Only taking the lock is retried, so ``fn`` runs exactly once. A ``sqlite3`` error
        inside becomes :class:`StorageError`; any other exception (e.g. from a user's
        ``update`` function) rolls back and propagates unchanged.
        """

        def job(conn: sqlite3.Connection) -> T:
            self._retrying(what, lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise StorageError(f"SQLite {what} failed on {self.path!r}: {exc}") from exc
            except BaseException:
                _rollback(conn)
                raise
            return result

        return job

    # -- lifecycle ---------------------------------------------------------------------

    def _open_sync(self) -> None:
        if self.path != ":memory:" and not self.path.startswith("file:"):
            parent = os.path.dirname(os.path.abspath(self.path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create the directory {parent!r}: {exc}") from exc
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                uri=self.path.startswith("file:"),
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the SQLite file {self.path!r}: {exc}") from exc
        try:
            busy_ms = int(self.busy_timeout * 1000)
            self._retrying("setup", lambda: conn.execute(f"PRAGMA busy_timeout = {busy_ms}"))
            self._retrying("setup", lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            self._retrying("setup", lambda: conn.execute("PRAGMA synchronous = NORMAL"))

            def create(c: sqlite3.Connection) -> None:
                for statement in _SCHEMA:
                    c.execute(statement)

            self._write("schema setup", create)(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def open(self) -> None:
        """Start the worker thread, open the file (creating parent directories) and the schema."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aos-sqlite")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, self._open_sync)
        except BaseException:
            executor.shutdown(wait=True)
            raise
        self._executor = executor

    async def close(self) -> None:
        """Close the connection and stop the worker thread."""
        executor = self._executor
        if executor is None:
            return

        def close_sync() -> None:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise StorageError(f"closing {self.path!r} failed: {exc}") from exc

        try:
            await asyncio.get_running_loop().run_in_executor(executor, close_sync)
        finally:
            self._executor = None
            # Every job submitted before close_sync has finished (one worker, FIFO).
            executor.shutdown(wait=True)

    async def _select(self, what: str, sql: str, params: tuple[object, ...]) -> list[_Row]:
        """The rows of one query (retried while another process holds a lock)."""

        def op(conn: sqlite3.Connection) -> list[_Row]:
            return conn.execute(sql, params).fetchall()

        return await self._run(self._read(what, op))

    async def _change(self, what: str, sql: str, params: tuple[object, ...]) -> bool:
        """Run one write statement in its own transaction; whether it changed a row."""

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, params).rowcount > 0

        return await self._run(self._write(what, op))

    # -- keys --------------------------------------------------------------------------

    async def get(self, ns: str, key: str) -> str | None:
        """Return the stored text, or ``None``."""
        rows = await self._select("get", _SELECT_VALUE, (ns, key))
        return str(rows[0][0]) if rows else None

    async def put(self, ns: str, key: str, text: str) -> None:
        """Store ``text`` under ``key``."""
        await self._change("put", _UPSERT, (ns, key, text))

    async def delete(self, ns: str, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        return await self._change(
            "delete", "DELETE FROM aos_kv WHERE ns = ? AND key = ?", (ns, key)
        )

    async def list(self, ns: str, prefix: str, limit: int | None) -> KeyRows:
        """Return ``(key, text)`` pairs under ``prefix``, sorted by key."""
        rows = await self._select(
            "list",
            "SELECT key, value FROM aos_kv WHERE ns = ? AND key >= ? "
            "AND substr(key, 1, ?) = ? ORDER BY key LIMIT ?",
            (ns, prefix, len(prefix), prefix, -1 if limit is None else limit),
        )
        return [(str(k), str(v)) for k, v in rows]

    async def update(self, ns: str, key: str, fn: TextUpdater) -> str:
        """Atomically replace the text with ``fn(current)`` in one immediate transaction."""

        def op(conn: sqlite3.Connection) -> str:
            row = conn.execute(_SELECT_VALUE, (ns, key)).fetchone()
            new = fn(None if row is None else str(row[0]))
            conn.execute(_UPSERT, (ns, key, new))
            return new

        return await self._run(self._write("update", op))

    async def put_if_absent(self, ns: str, key: str, text: str) -> bool:
        """Store ``text`` only if ``key`` is absent."""
        return await self._change(
            "put_if_absent",
            "INSERT INTO aos_kv (ns, key, value) VALUES (?, ?, ?) ON CONFLICT (ns, key) DO NOTHING",
            (ns, key, text),
        )

    # -- logs --------------------------------------------------------------------------

    async def append(self, ns: str, stream: str, text: str) -> int:
        """Append and return the new entry's sequence number."""

        def op(conn: sqlite3.Connection) -> int:
            seq = _last_seq(conn, ns, stream) + 1
            conn.execute(
                "INSERT INTO aos_log (ns, stream, seq, value) VALUES (?, ?, ?, ?)",
                (ns, stream, seq, text),
            )
            return seq

        return await self._run(self._write("append", op))

    async def read_log(self, ns: str, stream: str, start: int, limit: int | None) -> LogRows:
        """Return entries from ``start`` on, at most ``limit``."""
        rows = await self._select(
            "read_log",
            "SELECT seq, value FROM aos_log WHERE ns = ? AND stream = ? AND seq >= ? "
            "ORDER BY seq LIMIT ?",
            (ns, stream, start, -1 if limit is None else limit),
        )
        return [(int(s), str(v)) for s, v in rows]

    async def log_length(self, ns: str, stream: str) -> int:
        """Return the number of entries."""

        def op(conn: sqlite3.Connection) -> int:
            return _last_seq(conn, ns, stream)

        return await self._run(self._read("log_length", op))

    async def read_log_tail(self, ns: str, stream: str, n: int) -> LogRows:
        """Return the last ``n`` entries, oldest first."""
        rows = await self._select(
            "read_log_tail",
            "SELECT seq, value FROM aos_log WHERE ns = ? AND stream = ? ORDER BY seq DESC LIMIT ?",
            (ns, stream, n),
        )
        return [(int(s), str(v)) for s, v in reversed(rows)]


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _last_seq(conn: sqlite3.Connection, ns: str, stream: str) -> int:
    """The highest sequence number of a log (0 when empty): its length."""
    row = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM aos_log WHERE ns = ? AND stream = ?", (ns, stream)
    ).fetchone()
    return int(row[0])
