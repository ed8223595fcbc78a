"""The embedded durable engine (``sqlite:///path/to.db``).

One SQLite file in WAL mode. All database work runs on one worker thread per broker, never on
the event loop. Operations queue up while a transaction commits and are then executed
together in the next one (group commit): fifty concurrent publishers share one ``fsync``.
Each operation runs inside its own savepoint, so one failing operation does not undo the
others of its group. Writers take ``BEGIN IMMEDIATE`` with a busy timeout, and a busy
database is retried with backoff, so several processes can share one file without
"database is locked" reaching a user.

An idle consumer costs nothing: :meth:`SqliteBroker.wait` is woken by commits of this process,
by the other processes on the file (a datagram each, over unix sockets in a folder beside
it), and by due times from the engine's one timer; one slow safety poll per engine, on a
read connection of its own, covers a lost datagram (:mod:`.waiting`, :mod:`.peers`).

URL options: ``?synchronous=full|normal`` (default ``full``: a committed publish survives a
power loss; ``normal`` survives a process crash), ``busy_timeout_ms`` (default 5000).

Modules: :mod:`.broker` (the :class:`SqliteBroker` facade), :mod:`.writer` (the thread and
group commit), :mod:`.schema` (tables, opening the file), :mod:`.inserts` (enqueueing,
depth limits, dedup), :mod:`.queue_ops` (receive and settle), :mod:`.dead_letters`,
:mod:`.bindings`, :mod:`.url`, :mod:`.waiting` and :mod:`.peers` (wake-ups).
"""

from __future__ import annotations

from .broker import SqliteBroker
from .url import parse_sqlite_url

__all__ = ["SqliteBroker", "parse_sqlite_url"]
