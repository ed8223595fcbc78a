"""Putting envelopes into queues: rows, depth counting and its limit, publish dedup, and the
batched insert of consecutive plain sends that group commit uses."""

from __future__ import annotations

import sqlite3
from typing import Any, Sequence

from ...errors import BrokerError, DuplicateMessageError, QueueFullError
from ..base import Envelope
from .writer import Op

__all__ = ["Inserts", "add_depth", "insert"]

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


def add_depth(conn: sqlite3.Connection, queue: str, added: int, limit: int | None) -> None:
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


def insert(
    conn: sqlite3.Connection,
    envelopes: Sequence[Envelope],
    now: float,
    max_depth: int | None = None,
) -> None:
    """Insert ``envelopes`` one by one and count them into their queues' depths. Raises on a
    missing body, a live duplicate id or a queue over ``max_depth``."""
    added: dict[str, int] = {}
    for env in envelopes:
        if env.body is None:
            raise _no_body()
        try:
            conn.execute(_INSERT, _row(env, now))
        except sqlite3.IntegrityError as exc:
            raise DuplicateMessageError(
                f"message {env.message_id} is already in queue {env.queue!r}"
            ) from exc
        added[env.queue] = added.get(env.queue, 0) + 1
    for name, n in added.items():
        add_depth(conn, name, n, max_depth)


def _claim(conn: sqlite3.Connection, env: Envelope, now: float, window: float) -> bool:
    """Record ``env.dedup_key`` for ``window`` seconds; False when it was sent within its
    window (``env`` is then left out). Raises on a missing body, as :func:`insert` does."""
    if env.body is None:
        raise _no_body()
    key = env.dedup_key
    if key is None:
        return True
    row = conn.execute("SELECT expires_at FROM dedup WHERE key=?", (key,)).fetchone()
    if row is not None and row[0] > now:
        return False
    conn.execute("INSERT OR REPLACE INTO dedup(key, expires_at) VALUES (?, ?)", (key, now + window))
    return True


def _no_body() -> BrokerError:
    return BrokerError("the sqlite engine needs encoded envelopes (body)")


class Inserts:
    """The send side on the writer thread; also sweeps expired dedup and processed keys
    (at most every 30 s of engine time)."""

    def __init__(self) -> None:
        self._last_sweep = 0.0

    def send(
        self,
        conn: sqlite3.Connection,
        envelopes: Sequence[Envelope],
        now: float,
        max_depth: int | None,
        dedup_window: float,
    ) -> list[bool]:
        """One send: sweep when due, leave out the envelopes whose ``dedup_key`` was sent
        within ``dedup_window`` (False), :func:`insert` the others (True)."""
        self.sweep(conn, now)
        if dedup_window <= 0:
            insert(conn, envelopes, now, max_depth)
            return [True] * len(envelopes)
        fresh = [_claim(conn, env, now, dedup_window) for env in envelopes]
        insert(conn, [env for env, ok in zip(envelopes, fresh) if ok], now, max_depth)
        return fresh

    def insert_plain(self, conn: sqlite3.Connection, ops: Sequence[Op]) -> None:
        """Consecutive sends without dedup keys in one statement, each queue's depth updated
        and checked once. Any failure (a duplicate id, a full queue) raises, and the group is
        then re-run op by op, each in its own savepoint, so each send gets its own result."""
        rows: list[tuple[Any, ...]] = []
        added: dict[str, int] = {}
        limits: dict[str, int] = {}
        for op in ops:
            assert op.plain is not None
            envelopes, now, max_depth = op.plain
            self.sweep(conn, now)
            for env in envelopes:
                q = env.queue
                rows.append(_row(env, now))
                added[q] = added.get(q, 0) + 1
                if max_depth is not None:
                    limits[q] = min(limits.get(q, max_depth), max_depth)
            op.result = [True] * len(envelopes)
        conn.executemany(_INSERT, rows)
        for name, count in added.items():
            add_depth(conn, name, count, limits.get(name))

    def sweep(self, conn: sqlite3.Connection, now: float) -> None:
        """Delete expired dedup and processed keys, at most every 30 s."""
        if now - self._last_sweep >= 30.0:
            self._last_sweep = now
            conn.execute("DELETE FROM dedup WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM processed WHERE expires_at <= ?", (now,))
