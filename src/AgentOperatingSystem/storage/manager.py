"""The StorageManager: a small durable store of JSON values and append-only logs.

It holds what the messaging layer keeps beside the queues: conversations, the agent
registry, the key ring and access-control entries. Two kinds of data live in it, each
grouped by a *namespace* string:

- **keys**: ``get``/``put``/``delete``/``list``, an atomic read-modify-write ``update`` and
  ``put_if_absent``;
- **logs**: per ``(namespace, stream)`` an append-only sequence numbered from 1
  (``append``/``read_log``/``log_length``/``read_log_tail``).

Values are anything :func:`json.dumps` accepts (``NaN`` and infinities are refused). They are
stored as JSON text, so what you read back is always a fresh copy: tuples come back as lists
and non-string dict keys as strings.

The engine is chosen by URL: ``memory://`` (this process only) or ``sqlite:///path/to.db``
(relative path after three slashes, absolute with four: ``sqlite:////tmp/x.db``). Further
engines plug in with :func:`register_backend`, which maps a URL scheme to a factory building
a :class:`StorageBackend`.

The manager opens its engine lazily on first use, so ``StorageManager("sqlite:///a.db")``
can be handed to :class:`~AgentOperatingSystem.messaging.conversation_system.ConversationSystem`
without an explicit ``start()``. It is also an async context manager; ``close()`` (alias
``aclose()``) releases the engine, after which every call raises :class:`StorageError`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from ..config.urls import NATS_SCHEMES
from ..messaging.clock import SYSTEM_CLOCK, Clock
from ..messaging.errors import ConfigurationError, StorageError
from . import base
from .base import *  # noqa: F403  (the seam's names, importable from here too)
from .base import BackendFactory, KeyValues, LogEntries, StorageBackend

__all__ = [
    "StorageManager",
    "decode_value",
    "encode_value",
    "register_backend",
    "registered_schemes",
]
__all__ += base.__all__

_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Make URLs ``<scheme>://...`` build their backend with ``factory(url, clock)``.

    Registering a scheme again replaces the previous factory.
    """
    if not isinstance(scheme, str) or not scheme or "://" in scheme:
        raise ConfigurationError(f"invalid storage URL scheme {scheme!r}")
    if not callable(factory):
        raise ConfigurationError("a storage backend factory must be callable")
    _BACKENDS[scheme.lower()] = factory


def registered_schemes() -> list[str]:
    """Return the URL schemes a StorageManager accepts, sorted."""
    return sorted(_BACKENDS)


def _memory_factory(url: str, clock: Clock) -> StorageBackend:
    from .memory import MemoryStorageBackend

    return MemoryStorageBackend()


def _sqlite_factory(url: str, clock: Clock) -> StorageBackend:
    from .sqlite import SQLiteStorageBackend

    return SQLiteStorageBackend.from_url(url)


def _nats_factory(url: str, clock: Clock) -> StorageBackend:
    from .nats import NatsStorageBackend

    return NatsStorageBackend(url, clock)


register_backend("memory", _memory_factory)
register_backend("sqlite", _sqlite_factory)
for _scheme in NATS_SCHEMES:
    register_backend(_scheme, _nats_factory)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def encode_value(value: Any) -> str:
    """Encode a value as compact JSON text; :class:`StorageError` if it is not JSON data."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise StorageError(
            f"value of type {type(value).__name__} cannot be stored: it is not JSON-serialisable"
            f" ({exc})"
        ) from exc
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates cannot be written as UTF-8: fall back to \u escapes.
        text = json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text


def decode_value(text: str) -> Any:
    """Decode JSON text written by :func:`encode_value`."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"stored value is not valid JSON: {exc}") from exc


def _check_name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise StorageError(f"{kind} must be a non-empty string, not {value!r}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise StorageError(f"{kind} {value!r} is not valid Unicode text") from exc
    return value


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise StorageError(f"limit must be a non-negative int or None, not {limit!r}")
    return limit


class StorageManager:
    """A store of JSON values and append-only logs, chosen by URL.

    ``StorageManager("memory://")`` keeps everything in this process;
    ``StorageManager("sqlite:///data/aos.db")`` keeps it in a SQLite file that several
    processes may share. The engine is opened on first use; ``start()`` opens it eagerly.
    """

    def __init__(self, url: str = "memory://", *, clock: Clock | None = None) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise ConfigurationError(
                f"invalid storage URL {url!r}; expected e.g. 'memory://' or 'sqlite:///path.db'"
            )
        scheme = url.split("://", 1)[0].lower()
        factory = _BACKENDS.get(scheme)
        if factory is None:
            raise ConfigurationError(
                f"unknown storage URL scheme {scheme!r} in {url!r}; "
                f"supported: {', '.join(registered_schemes())}"
            )
        self.url = url
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._backend: StorageBackend = factory(url, self.clock)
        self._open = False
        self._closed = False
        self._open_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._open else "not started"
        return f"<StorageManager {self.url!r} {state}>"

    @property
    def backend(self) -> StorageBackend:
        """The engine behind this manager."""
        return self._backend

    @property
    def is_open(self) -> bool:
        """Whether the engine has been opened and not closed."""
        return self._open and not self._closed

    # -- lifecycle ---------------------------------------------------------------------

    async def _ensure_open(self) -> StorageBackend:
        if self._closed:
            raise StorageError(f"the StorageManager for {self.url!r} is closed")
        if self._open:
            return self._backend
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._closed:
                raise StorageError(f"the StorageManager for {self.url!r} is closed")
            if not self._open:
                await self._backend.open()
                self._open = True
        return self._backend

    async def start(self) -> None:
        """Open the engine now (otherwise it opens on first use)."""
        await self._ensure_open()

    async def close(self) -> None:
        """Close the engine. Idempotent; the manager cannot be used afterwards."""
        if self._closed:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._closed:
                return
            self._closed = True
            if self._open:
                self._open = False
                await self._backend.close()

    async def aclose(self) -> None:
        """Alias of :meth:`close`."""
        await self.close()

    async def __aenter__(self) -> StorageManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- keys --------------------------------------------------------------------------

    async def get(self, ns: str, key: str) -> Any | None:
        """Return the value stored under ``key``, or ``None``."""
        _check_name("namespace", ns)
        _check_name("key", key)
        text = await (await self._ensure_open()).get(ns, key)
        return None if text is None else decode_value(text)

    async def put(self, ns: str, key: str, value: Any) -> None:
        """Store ``value`` under ``key``, replacing what was there."""
        _check_name("namespace", ns)
        _check_name("key", key)
        text = encode_value(value)
        await (await self._ensure_open()).put(ns, key, text)

    async def delete(self, ns: str, key: str) -> bool:
        """Remove ``key``; return ``True`` if it existed."""
        _check_name("namespace", ns)
        _check_name("key", key)
        return await (await self._ensure_open()).delete(ns, key)

    async def list(self, ns: str, prefix: str = "", limit: int | None = None) -> KeyValues:
        """Return ``(key, value)`` pairs whose key starts with ``prefix``, sorted by key."""
        _check_name("namespace", ns)
        if not isinstance(prefix, str):
            raise StorageError(f"prefix must be a string, not {prefix!r}")
        if prefix:
            _check_name("prefix", prefix)
        limit = _check_limit(limit)
        rows = await (await self._ensure_open()).list(ns, prefix, limit)
        return [(key, decode_value(text)) for key, text in rows]

    async def update(self, ns: str, key: str, fn: Callable[[Any], Any]) -> Any:
        """Atomically replace the value with ``fn(current)`` and return the new value.

        ``fn`` gets the current value (``None`` when absent) and returns the new one. It is
        called exactly once, inside the engine's transaction (for SQLite, on the engine's
        worker thread), so it must be quick and must not touch the event loop. If it raises,
        nothing is written and its exception reaches the caller unchanged.
        """
        _check_name("namespace", ns)
        _check_name("key", key)
        if not callable(fn):
            raise StorageError("update() needs a callable")

        def on_text(current: str | None) -> str:
            value = None if current is None else decode_value(current)
            return encode_value(fn(value))

        text = await (await self._ensure_open()).update(ns, key, on_text)
        return decode_value(text)

    async def put_if_absent(self, ns: str, key: str, value: Any) -> bool:
        """Store ``value`` only if ``key`` is absent; return whether it was stored."""
        _check_name("namespace", ns)
        _check_name("key", key)
        text = encode_value(value)
        return await (await self._ensure_open()).put_if_absent(ns, key, text)

    # -- logs --------------------------------------------------------------------------

    async def append(self, ns: str, stream: str, value: Any) -> int:
        """Append ``value`` to the log and return its sequence number (1, 2, 3, ...)."""
        _check_name("namespace", ns)
        _check_name("stream", stream)
        text = encode_value(value)
        return await (await self._ensure_open()).append(ns, stream, text)

    async def read_log(
        self, ns: str, stream: str, start: int = 1, limit: int | None = None
    ) -> LogEntries:
        """Return ``(sequence, value)`` pairs from ``start`` on, oldest first."""
        _check_name("namespace", ns)
        _check_name("stream", stream)
        if isinstance(start, bool) or not isinstance(start, int):
            raise StorageError(f"start must be an int, not {start!r}")
        limit = _check_limit(limit)
        rows = await (await self._ensure_open()).read_log(ns, stream, max(start, 1), limit)
        return [(seq, decode_value(text)) for seq, text in rows]

    async def log_length(self, ns: str, stream: str) -> int:
        """Return how many entries the log holds (0 for a log never written)."""
        _check_name("namespace", ns)
        _check_name("stream", stream)
        return await (await self._ensure_open()).log_length(ns, stream)

    async def read_log_tail(self, ns: str, stream: str, n: int) -> LogEntries:
        """Return the last ``n`` entries, oldest first."""
        _check_name("namespace", ns)
        _check_name("stream", stream)
        count = _check_limit(n)
        if count is None:
            raise StorageError("n must be a non-negative int")
        if count == 0:
            return []
        rows = await (await self._ensure_open()).read_log_tail(ns, stream, count)
        return [(seq, decode_value(text)) for seq, text in rows]
