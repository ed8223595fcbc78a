"""The storage seam: what every storage engine implements, and the row types it returns.

The :class:`~.manager.StorageManager` speaks to its engine through :class:`StorageBackend`;
the engines (``memory``, ``sqlite``, ``nats``) import only this module, never the manager.

An engine may also offer :class:`ChangeFeed`, an optional capability (checked with
``isinstance`` once, by whoever keeps a cache of the store): what changed in a namespace
since a point of the store's history, at a cost that follows the changes, not the number of
keys. The NATS engine has it; memory and SQLite do not (their readers re-read a namespace).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from ..messaging.clock import Clock

__all__ = [
    "BackendFactory",
    "ChangeFeed",
    "KeyChange",
    "KeyRows",
    "KeyValues",
    "LogEntries",
    "LogRows",
    "StorageBackend",
    "TextUpdater",
]

KeyRows = list[tuple[str, str]]
"""``(key, json_text)`` pairs as a backend returns them."""
LogRows = list[tuple[int, str]]
"""``(sequence, json_text)`` pairs as a backend returns them."""
KeyValues = list[tuple[str, Any]]
"""``(key, value)`` pairs."""
LogEntries = list[tuple[int, Any]]
"""``(sequence, value)`` pairs."""

TextUpdater = Callable[[str | None], str]
"""What a backend's ``update`` gets: the stored JSON text (or ``None``) -> the new JSON text."""


@runtime_checkable
class StorageBackend(Protocol):
    """The seam every storage engine implements.

    Values cross this seam as JSON **text** (``str``); the manager encodes and decodes them,
    so an engine never needs to know about JSON. Namespaces, keys and streams are non-empty
    strings that the manager has already checked.

    Contract (the tests in ``tests/test_storage.py`` run every engine through it):

    - ``list`` returns ``(key, text)`` pairs whose key starts with ``prefix``, sorted by
      key (code-point order), at most ``limit`` of them.
    - ``update`` reads the current text (``None`` when absent), calls ``fn`` once and stores
      its result, all atomically with respect to every other writer, including other
      processes using the same store. If ``fn`` raises, nothing is written and the exception
      propagates **unchanged**.
    - ``append`` gives the new entry the next sequence number of its stream (1, 2, 3, ...),
      with no gaps and no duplicates even when several processes append at once.
    - ``read_log`` returns ``(sequence, text)`` pairs with ``sequence >= start`` in
      ascending order, at most ``limit``; ``read_log_tail`` the last ``n`` in ascending order.
    - Engine failures are raised as :class:`StorageError` (``raise ... from exc``).
    """

    async def open(self) -> None:
        """Connect / create the store. Called once, before any other method."""
        ...

    async def close(self) -> None:
        """Release every resource. Called once; no method is called afterwards."""
        ...

    async def get(self, ns: str, key: str) -> str | None:
        """Return the stored text, or ``None``."""
        ...

    async def put(self, ns: str, key: str, text: str) -> None:
        """Store ``text`` under ``key`` (insert or replace)."""
        ...

    async def delete(self, ns: str, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        ...

    async def list(self, ns: str, prefix: str, limit: int | None) -> KeyRows:
        """Return the ``(key, text)`` pairs under ``prefix``, sorted by key."""
        ...

    async def update(self, ns: str, key: str, fn: TextUpdater) -> str:
        """Atomically replace the text with ``fn(current)`` and return the new text."""
        ...

    async def put_if_absent(self, ns: str, key: str, text: str) -> bool:
        """Store ``text`` only if ``key`` is absent; return whether it was stored."""
        ...

    async def append(self, ns: str, stream: str, text: str) -> int:
        """Append to the log and return the entry's 1-based sequence number."""
        ...

    async def read_log(self, ns: str, stream: str, start: int, limit: int | None) -> LogRows:
        """Return entries with ``sequence >= start`` in order, at most ``limit``."""
        ...

    async def log_length(self, ns: str, stream: str) -> int:
        """Return the number of entries (the last sequence number; 0 when empty)."""
        ...

    async def read_log_tail(self, ns: str, stream: str, n: int) -> LogRows:
        """Return the last ``n`` entries in ascending order."""
        ...


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A key of a namespace written (``text``: its JSON text now) or deleted (``None``)."""

    key: str
    text: str | None


@runtime_checkable
class ChangeFeed(Protocol):
    """An engine that can say what changed since a point of its history (see the module docs).

    A cursor is an integer that grows with every write to the store (any namespace).
    ``changes(ns, since, until)`` reports each key of ``ns`` written or deleted after
    ``since`` and no later than ``until``, once, with its latest state, oldest first; a key
    written again after ``until`` is reported by the next call instead. Asking when nothing
    changed costs one small request (``change_cursor``), whatever the number of keys.
    """

    async def change_cursor(self) -> int:
        """The store's point now: the cursor of its latest write (0 when empty)."""
        ...

    async def changes(self, ns: str, since: int, until: int) -> list[KeyChange]:
        """The keys of ``ns`` written or deleted in ``(since, until]``, oldest first."""
        ...


BackendFactory = Callable[[str, Clock], StorageBackend]
"""Builds a backend from the full URL and the manager's clock. It must not do I/O."""
