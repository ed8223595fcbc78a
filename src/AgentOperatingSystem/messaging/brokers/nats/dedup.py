"""``dedup_key`` records in the ``<ns>_dedup`` bucket.

A key is claimed with a compare-and-set on the engine's clock, scoped per queue: a key sent
to the same queue within the window is not enqueued (``send`` answers False). Records live
at most the engine's ``dedup_window`` (the bucket's ttl).
"""

from __future__ import annotations

import contextlib
import os

import nats.js.errors

from ..base import Envelope
from .bucket_keys import BucketKeys
from .headers import fnum
from .subjects import hash_text, queue_token

__all__ = ["DedupKeys"]


class DedupKeys(BucketKeys):
    """Claims on ``dedup_key`` values, per queue, in the dedup bucket."""

    __slots__ = ()

    async def claim(self, env: Envelope, window: float) -> tuple[bool, str | None]:
        """Record ``env.dedup_key`` unless sent to its queue within ``window``; (fresh, key)."""
        assert env.dedup_key is not None
        kv = self._kv
        key = f"{queue_token(env.queue)}.{hash_text(env.dedup_key)}"
        now = self._clock.now()
        value = f"{now!r} {os.urandom(6).hex()}".encode()

        async def claim() -> bool:
            try:
                await kv.create(key, value)
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                await kv.create(key, value)
                return True
            if entry.value == value:
                return True  # our own claim, answered before a reconnect
            stored = (entry.value or b"").decode(errors="replace").split(" ")[0]
            seen = fnum(stored, 0.0) or 0.0
            if now - seen < window:
                return False
            try:
                await kv.update(key, value, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return False  # someone else claimed it just now
            return True

        fresh = await self._conn.retrying("dedup", claim)
        return fresh, key

    async def unclaim(self, key: str) -> None:
        """Give a claim back (its message was not enqueued after all)."""
        with contextlib.suppress(Exception):
            await self._kv.delete(key)
