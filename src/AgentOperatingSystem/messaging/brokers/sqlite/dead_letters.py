"""Each queue's dead-letter queue on the writer thread: move a locked message there, put an
envelope there directly, list, resubmit, purge, count."""

from __future__ import annotations

import sqlite3

from ...errors import BrokerError
from ...policy import DEFAULT_OPTIONS
from ..base import DeadLetter, Envelope
from .inserts import insert

__all__ = ["count", "dead_letter", "list_dead", "purge", "put", "resubmit"]

_INTO_DEAD = (
    " INTO dead_letters(queue, id, priority, body, reason, error, attempts, enqueued_at,"
    " dead_at) VALUES (?,?,?,?,?,?,?,?,?)"
)


def dead_letter(
    conn: sqlite3.Connection,
    queue: str,
    message_id: str,
    token: str,
    now: float,
    reason: str,
    error: str | None,
) -> bool:
    """Move a message still locked by ``token`` to the dead letters (replacing an older dead
    letter of that id); False when the lock was lost."""
    row = conn.execute(
        "SELECT seq, priority, body, attempts, enqueued_at FROM messages"
        " WHERE queue=? AND id=? AND token=? AND visible_at>?",
        (queue, message_id, token, now),
    ).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM messages WHERE seq=?", (row[0],))
    conn.execute("UPDATE depths SET depth = depth - 1 WHERE queue=?", (queue,))
    conn.execute("DELETE FROM dead_letters WHERE queue=? AND id=?", (queue, message_id))
    conn.execute(
        "INSERT" + _INTO_DEAD,
        (queue, message_id, row[1], row[2], reason, error, row[3], row[4], now),
    )
    return True


def put(
    conn: sqlite3.Connection,
    env: Envelope,
    now: float,
    reason: str,
    error: str | None,
    attempts: int,
) -> bool:
    """Store ``env`` as a dead letter of its queue, never deliverable; False (nothing
    changed) when a dead letter of that id is there already."""
    if env.body is None:
        raise BrokerError("the sqlite engine needs encoded envelopes (body)")
    cur = conn.execute(
        "INSERT OR IGNORE" + _INTO_DEAD,
        (env.queue, env.message_id, env.priority, env.body, reason, error, attempts, now, now),
    )
    return cur.rowcount == 1


def list_dead(conn: sqlite3.Connection, queue: str, limit: int) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of the queue, oldest first."""
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


def resubmit(conn: sqlite3.Connection, queue: str, message_id: str, now: float) -> bool:
    """Move a dead letter back into its queue, available now, attempts reset; False when
    there is none of that id."""
    row = conn.execute(
        "SELECT dseq, priority, body FROM dead_letters WHERE queue=? AND id=?",
        (queue, message_id),
    ).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM dead_letters WHERE dseq=?", (row[0],))
    insert(conn, [Envelope(queue, message_id, row[1], bytes(row[2]), available_at=now)], now)
    return True


def purge(conn: sqlite3.Connection, queue: str) -> int:
    """Delete the queue's dead letters; how many."""
    return conn.execute("DELETE FROM dead_letters WHERE queue=?", (queue,)).rowcount


def count(conn: sqlite3.Connection, queue: str) -> int:
    """Dead letters of the queue."""
    return int(
        conn.execute("SELECT COUNT(*) FROM dead_letters WHERE queue=?", (queue,)).fetchone()[0]
    )
