"""Queue operations on the writer thread: receive under a lock, settle (ack, release, renew),
depth, queue listing and removal, exactly-once keys.

Each is a function of the connection and plain arguments, run as one :class:`~.writer.Op`.
A lock is ``visible_at`` in the future plus the ``token`` the delivery was handed out with.
"""

from __future__ import annotations

import sqlite3
from typing import Sequence

from ...errors import MessagingError
from ...policy import DEFAULT_OPTIONS
from ..base import Delivery, Envelope, SettlementRef
from .inserts import insert

__all__ = [
    "Rollback",
    "ack",
    "delete_queue",
    "depth",
    "is_processed",
    "queues",
    "receive",
    "release",
    "renew",
]


class Rollback(MessagingError):
    """Internal: undo an ack whose locks were lost, reporting per-settlement results."""

    def __init__(self, results: list[bool]) -> None:
        super().__init__("lock lost")
        self.results = results


def receive(
    conn: sqlite3.Connection,
    queue: str,
    max_messages: int,
    now: float,
    lock_seconds: float,
    token: str,
) -> tuple[list[Delivery], float | None]:
    """Lock and return up to ``max_messages`` visible messages, priority then FIFO, with the
    queue's next due time when that drained it: the earliest ``visible_at`` left (a delay or
    backoff ending, a lock expiring, from any process), or None when the queue is empty or
    not drained."""
    rows = conn.execute(
        "SELECT seq, id, priority, body, attempts, enqueued_at, expires_at, last_error"
        " FROM messages WHERE queue=? AND visible_at<=? ORDER BY priority, seq LIMIT ?",
        (queue, now, max_messages),
    ).fetchall()
    due: float | None = None
    if rows:
        conn.executemany(
            "UPDATE messages SET visible_at=?, attempts=attempts+1, token=? WHERE seq=?",
            [(now + lock_seconds, token, r[0]) for r in rows],
        )
    if len(rows) < max_messages:
        due = conn.execute(
            "SELECT MIN(visible_at) FROM messages WHERE queue=?", (queue,)
        ).fetchone()[0]
    if not rows:
        return [], due
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
    ], due


def ack(
    conn: sqlite3.Connection,
    queue: str,
    settlements: Sequence[SettlementRef],
    now: float,
    processed_key: str | None,
    processed_ttl: float,
    outbox: Sequence[Envelope],
) -> tuple[list[bool], bool]:
    """Delete the settled messages still locked by their tokens; return the per-settlement
    results and whether that left the queue empty. With ``processed_key`` the key is
    recorded and ``outbox`` enqueued too, or (a lock lost) nothing at all: raises
    :class:`Rollback` with the per-settlement results."""
    out: list[bool] = []
    for s in settlements:
        cur = conn.execute(
            "DELETE FROM messages WHERE queue=? AND id=? AND token=? AND visible_at>?",
            (queue, s.message_id, s.token, now),
        )
        out.append(cur.rowcount == 1)
    removed = sum(out)
    empty = False
    if removed:
        conn.execute("UPDATE depths SET depth = depth - ? WHERE queue=?", (removed, queue))
        row = conn.execute("SELECT depth FROM depths WHERE queue=?", (queue,)).fetchone()
        empty = row is not None and row[0] <= 0
    if processed_key is not None:
        if not all(out):
            raise Rollback(out)
        conn.execute(
            "INSERT OR REPLACE INTO processed(key, expires_at) VALUES (?, ?)",
            (processed_key, now + max(processed_ttl, 0.0)),
        )
        if outbox:
            insert(conn, outbox, now)
    return out, empty


def release(
    conn: sqlite3.Connection,
    queue: str,
    settlement: SettlementRef,
    now: float,
    delay: float,
    error: str | None,
) -> bool:
    """Unlock a locked message: visible again after ``delay``, with its last error."""
    cur = conn.execute(
        "UPDATE messages SET visible_at=?, token=NULL, last_error=? "
        "WHERE queue=? AND id=? AND token=? AND visible_at>?",
        (now + max(delay, 0.0), error, queue, settlement.message_id, settlement.token, now),
    )
    return cur.rowcount == 1


def renew(
    conn: sqlite3.Connection,
    queue: str,
    settlements: Sequence[SettlementRef],
    now: float,
    lock_seconds: float,
) -> list[bool]:
    """Extend the locks still held to ``now + lock_seconds``."""
    return [
        conn.execute(
            "UPDATE messages SET visible_at=? WHERE queue=? AND id=? AND token=? AND visible_at>?",
            (now + lock_seconds, queue, s.message_id, s.token, now),
        ).rowcount
        == 1
        for s in settlements
    ]


def depth(conn: sqlite3.Connection, queue: str) -> int:
    """Live messages in the queue (the counted depth)."""
    row = conn.execute("SELECT depth FROM depths WHERE queue=?", (queue,)).fetchone()
    return int(row[0]) if row else 0


def queues(conn: sqlite3.Connection) -> list[str]:
    """Queues holding messages or dead letters, sorted."""
    rows = conn.execute(
        "SELECT queue FROM depths WHERE depth > 0"
        " UNION SELECT DISTINCT queue FROM dead_letters ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def delete_queue(conn: sqlite3.Connection, queue: str) -> None:
    """Drop the queue's messages, dead letters and depth."""
    conn.execute("DELETE FROM messages WHERE queue=?", (queue,))
    conn.execute("DELETE FROM dead_letters WHERE queue=?", (queue,))
    conn.execute("DELETE FROM depths WHERE queue=?", (queue,))


def is_processed(conn: sqlite3.Connection, key: str, now: float) -> bool:
    """Whether the exactly-once key is recorded and not expired."""
    row = conn.execute("SELECT expires_at FROM processed WHERE key=?", (key,)).fetchone()
    return row is not None and row[0] > now
