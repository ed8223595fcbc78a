"""Exactly-once keys in the ``<ns>_done`` bucket: recorded by ``ack(processed_key=...)``,
read by ``is_processed``; a key's ttl runs on the engine's clock (and the bucket keeps
none longer than ``PROCESSED_MAX_AGE``)."""

from __future__ import annotations

import nats.js.errors

from ...errors import BrokerError
from .bucket_keys import BucketKeys
from .headers import fnum
from .subjects import hash_text
from .translate import caused_by

__all__ = ["ProcessedKeys"]


class ProcessedKeys(BucketKeys):
    """Recorded exactly-once keys and their expiry, in the processed-keys bucket."""

    __slots__ = ()

    async def record(self, key: str, ttl: float) -> None:
        """Record ``key`` for ``ttl`` seconds (0: until the bucket's maximum age)."""
        kv = self._kv
        expires = self._clock.now() + ttl if ttl > 0 else 0.0
        value = repr(expires).encode()
        await self._conn.retrying("record processed", lambda: kv.put(hash_text(key, 64), value))

    async def is_processed(self, key: str) -> bool:
        """Whether ``key`` was recorded by ``ack`` and its ttl (engine clock) has not run out."""
        self._conn.check_open()
        kv = self._kv
        try:
            entry = await self._conn.retrying("is_processed", lambda: kv.get(hash_text(key, 64)))
        except BrokerError as exc:
            if caused_by(exc, nats.js.errors.KeyNotFoundError):
                return False
            raise
        expires = fnum(entry.value.decode() if entry.value else None, 0.0) or 0.0
        return expires == 0.0 or self._clock.now() < expires
