"""The in-process storage engine (``memory://``).

Everything lives in dictionaries of this process and is gone when the manager closes. Every
operation runs without awaiting anything in between, so on one event loop each one is atomic.
"""

from __future__ import annotations

from .base import KeyRows, LogRows, TextUpdater

__all__ = ["MemoryStorageBackend"]


class MemoryStorageBackend:
    """A :class:`~.manager.StorageBackend` that keeps JSON text in dictionaries."""

    def __init__(self) -> None:
        self._keys: dict[str, dict[str, str]] = {}
        self._logs: dict[tuple[str, str], list[str]] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Drop everything."""
        self._keys.clear()
        self._logs.clear()

    async def get(self, ns: str, key: str) -> str | None:
        """Return the stored text, or ``None``."""
        return self._keys.get(ns, {}).get(key)

    async def put(self, ns: str, key: str, text: str) -> None:
        """Store ``text`` under ``key``."""
        self._keys.setdefault(ns, {})[key] = text

    async def delete(self, ns: str, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        space = self._keys.get(ns)
        if space is None or key not in space:
            return False
        del space[key]
        return True

    async def list(self, ns: str, prefix: str, limit: int | None) -> KeyRows:
        """Return ``(key, text)`` pairs under ``prefix``, sorted by key."""
        space = self._keys.get(ns, {})
        keys = sorted(k for k in space if k.startswith(prefix))
        if limit is not None:
            keys = keys[:limit]
        return [(k, space[k]) for k in keys]

    async def update(self, ns: str, key: str, fn: TextUpdater) -> str:
        """Replace the text with ``fn(current)``; nothing changes if ``fn`` raises."""
        space = self._keys.setdefault(ns, {})
        new = fn(space.get(key))
        space[key] = new
        return new

    async def put_if_absent(self, ns: str, key: str, text: str) -> bool:
        """Store ``text`` only if ``key`` is absent."""
        space = self._keys.setdefault(ns, {})
        if key in space:
            return False
        space[key] = text
        return True

    async def append(self, ns: str, stream: str, text: str) -> int:
        """Append and return the new entry's sequence number."""
        log = self._logs.setdefault((ns, stream), [])
        log.append(text)
        return len(log)

    async def read_log(self, ns: str, stream: str, start: int, limit: int | None) -> LogRows:
        """Return entries from ``start`` on, at most ``limit``."""
        log = self._logs.get((ns, stream), [])
        first = max(start, 1) - 1
        last = len(log) if limit is None else min(len(log), first + limit)
        return [(i + 1, log[i]) for i in range(first, last)]

    async def log_length(self, ns: str, stream: str) -> int:
        """Return the number of entries."""
        return len(self._logs.get((ns, stream), []))

    async def read_log_tail(self, ns: str, stream: str, n: int) -> LogRows:
        """Return the last ``n`` entries, oldest first."""
        log = self._logs.get((ns, stream), [])
        first = max(0, len(log) - n)
        return [(i + 1, log[i]) for i in range(first, len(log))]
