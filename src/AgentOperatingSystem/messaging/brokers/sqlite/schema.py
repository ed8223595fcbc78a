"""The engine's tables, and opening the file: WAL mode, pragmas, a busy database retried.

``messages`` holds live messages (available, delayed or locked: a lock is a ``visible_at``
in the future with a ``token``); ``depths`` counts them per queue so a depth check reads one
row; ``dead_letters`` is every queue's dead-letter queue; ``dedup`` and ``processed`` keep
the exactly-once keys until they expire; ``bindings`` maps topics to queues.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Callable, TypeVar

from ...errors import BrokerError

__all__ = ["SCHEMA", "connect", "with_retry"]

T = TypeVar("T")

SCHEMA = """
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


def with_retry(fn: Callable[[], T], busy_ms: int) -> T:
    """Run ``fn``, retrying with backoff while another process holds the database (a
    "locked"/"busy" error), for at least 30 s; any other error is raised at once."""
    deadline = time.monotonic() + max(30.0, busy_ms / 1000 * 4)
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


def connect(path: Path, synchronous: str, busy_ms: int) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with the given ``synchronous`` level and create the tables.
    The connection is in autocommit mode: the writer opens each transaction itself."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=True)
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise BrokerError(f"could not switch {path} to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=OFF")
    with_retry(lambda: conn.executescript(SCHEMA), busy_ms)
    return conn
