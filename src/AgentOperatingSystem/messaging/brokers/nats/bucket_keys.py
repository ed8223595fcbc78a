"""The base of the keys this engine keeps in a KV bucket, each with an expiry.

:class:`~.dedup.DedupKeys` (claims on ``dedup_key`` values) and
:class:`~.processed.ProcessedKeys` (recorded exactly-once keys) are the two kinds: each holds
the connection (its retrying calls), its bucket and the clock its expiries are read on.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.kv import KeyValue

from ...clock import Clock
from .connection import Connection

__all__ = ["BucketKeys"]


@dataclass(slots=True)
class BucketKeys:
    """Keys in one KV bucket: the connection, the bucket and the clock."""

    _conn: Connection
    _kv: KeyValue
    _clock: Clock
