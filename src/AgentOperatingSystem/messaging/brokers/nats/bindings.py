"""Topic bindings (fan-out) in the ``<ns>_bind`` bucket: one key per topic, its value the
sorted list of bound queues, changed with compare-and-set so every process sees one list."""

from __future__ import annotations

import json
from typing import Callable

import nats.js.errors
from nats.js.kv import KeyValue

from ...errors import BrokerError
from .connection import Connection
from .subjects import queue_token
from .translate import caused_by

__all__ = ["Bindings"]

#: Compare-and-set rounds lost to other writers before an update gives up.
_CONTENTION_ROUNDS = 50


class Bindings:
    """Durable topic -> queues bindings shared by every process."""

    def __init__(self, conn: Connection, kv: KeyValue) -> None:
        self._conn = conn
        self._kv = kv

    async def _update(self, topic: str, change: Callable[[set[str]], None]) -> None:
        kv = self._kv
        key = queue_token(topic)

        async def once() -> bool:
            try:
                entry = await kv.get(key)
                current = set(json.loads(entry.value or b"[]"))
                revision: int | None = entry.revision
            except nats.js.errors.KeyNotFoundError:
                current, revision = set(), None
            before = set(current)
            change(current)
            if current == before:
                return True
            value = json.dumps(sorted(current)).encode()
            try:
                if revision is None:
                    await kv.create(key, value)
                else:
                    await kv.update(key, value, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return False
            return True

        for _ in range(_CONTENTION_ROUNDS):
            if await self._conn.retrying("bind", once):
                return
        raise BrokerError(f"could not update the bindings of {topic!r}: too much contention")

    async def bind(self, topic: str, queue: str) -> None:
        """Subscribe ``queue`` to ``topic`` (durable, shared by every process)."""
        self._conn.check_open()
        await self._update(topic, lambda s: s.add(queue))

    async def unbind(self, topic: str, queue: str) -> None:
        """Remove a binding."""
        self._conn.check_open()
        await self._update(topic, lambda s: s.discard(queue))

    async def bindings(self, topic: str) -> list[str]:
        """Queues bound to ``topic``."""
        self._conn.check_open()
        kv = self._kv
        try:
            entry = await self._conn.retrying("bindings", lambda: kv.get(queue_token(topic)))
        except BrokerError as exc:
            if caused_by(exc, nats.js.errors.KeyNotFoundError):
                return []
            raise
        return sorted(str(q) for q in json.loads(entry.value or b"[]"))
