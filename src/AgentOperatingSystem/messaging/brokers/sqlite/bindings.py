"""Durable topic bindings on the writer thread: which queues a fan-out publish reaches."""

from __future__ import annotations

import sqlite3

__all__ = ["bind", "bindings", "unbind"]


def bind(conn: sqlite3.Connection, topic: str, queue: str) -> None:
    """Bind ``queue`` to ``topic`` (once)."""
    conn.execute("INSERT OR IGNORE INTO bindings(topic, queue) VALUES (?, ?)", (topic, queue))


def unbind(conn: sqlite3.Connection, topic: str, queue: str) -> None:
    """Remove a binding."""
    conn.execute("DELETE FROM bindings WHERE topic=? AND queue=?", (topic, queue))


def bindings(conn: sqlite3.Connection, topic: str) -> list[str]:
    """Queues bound to ``topic``, in binding order."""
    rows = conn.execute(
        "SELECT queue FROM bindings WHERE topic=? ORDER BY rowid", (topic,)
    ).fetchall()
    return [r[0] for r in rows]
