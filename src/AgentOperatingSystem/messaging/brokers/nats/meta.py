"""Per-message bookkeeping in the ``<ns>_meta`` bucket, only for messages that have any.

A message's ``last_error`` (from ``release(error=...)``) and its phantom deliveries (the
redeliveries the engine itself caused to honour a future ``available_at``, which do not
count as attempts) are kept under its stream sequence, with a cache of recent entries.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue

from ...errors import BrokerError
from .connection import Connection
from .translate import caused_by

__all__ = ["Meta", "MetaStore"]

#: At most this many entries are cached.
_CACHE_SIZE = 10_000


@dataclass(slots=True)
class Meta:
    """What the engine keeps about one stored message."""

    phantom: int = 0
    error: str | None = None

    def encode(self) -> bytes:
        """The stored value."""
        return json.dumps({"p": self.phantom, "e": self.error}).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Meta:
        """Read a stored value (a malformed one reads as empty)."""
        try:
            raw = json.loads(data or b"{}")
            return cls(int(raw.get("p", 0)), raw.get("e"))
        except (ValueError, TypeError, AttributeError):
            return cls()


class MetaStore:
    """The meta bucket, by stream sequence, with a cache."""

    def __init__(self, conn: Connection, kv: KeyValue) -> None:
        self._conn = conn
        self._kv = kv
        self.cache: OrderedDict[int, Meta] = OrderedDict()

    async def get(self, seq: int) -> Meta | None:
        """The meta of message ``seq``; None when it has none."""
        cached = self.cache.get(seq)
        if cached is not None:
            return cached
        try:
            with self._conn.errors("meta"):
                entry = await self._kv.get(str(seq))
        except BrokerError as exc:
            if caused_by(exc, nats.js.errors.KeyNotFoundError):
                return None
            raise
        meta = Meta.decode(entry.value)
        self._remember(seq, meta)
        return meta

    def _remember(self, seq: int, meta: Meta) -> None:
        self.cache[seq] = meta
        self.cache.move_to_end(seq)
        while len(self.cache) > _CACHE_SIZE:
            self.cache.popitem(last=False)

    async def save(self, seq: int, meta: Meta) -> None:
        """Store the meta of message ``seq``."""
        kv = self._kv
        self._remember(seq, meta)
        await self._conn.retrying("meta", lambda: kv.put(str(seq), meta.encode()))

    async def drop(self, seq: int) -> None:
        """Forget the meta of a settled message (best effort)."""
        self.cache.pop(seq, None)
        with contextlib.suppress(Exception):
            await self._kv.delete(str(seq))
