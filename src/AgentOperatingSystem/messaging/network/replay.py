"""Replay protection of node-to-node messages: :class:`ReplayCache`.

A signed ``POST /aos/v1/messages`` is accepted once. Its signature is recorded in the
node's :class:`~AgentOperatingSystem.storage.manager.StorageManager` (the one holding the
registry) before the message is admitted, and a request that presents a recorded signature
again is refused ``401``. Senders sign every attempt anew (a retry has a new timestamp, so a
new signature), so only a copy of a request is ever refused.

A record is kept as long as its request's timestamp passes the ``signature_max_age`` check,
plus one slot: records are grouped by the timestamp into namespaces
``aos.network.replay.<slot>`` of ``signature_max_age / 10`` seconds (at least 1 s), and a
collector drops the slots that are past the limit. So the protection does not depend on the
bus's dedup window, and the state a client can create is bounded by what it can send within
``signature_max_age``.

On a durable store (SQLite, NATS) a restart does not reopen the window. A store in memory
forgets at a restart; such a node refuses (``503``, so the sender signs again and retries)
any request signed before the node started, so nothing sent before the restart can be
replayed after it; the answer's ``X-AOS-Not-Before`` header gives that time, and a sender
(:class:`~.transport.Transport`) signs the request again from it at once (a sender whose
clock is behind this node's does not fail for it).
"""

from __future__ import annotations

import asyncio
import math
from typing import Mapping, NamedTuple

from ...config.network import NetworkConfig
from ...storage.manager import StorageManager
from ..clock import Clock
from ..errors import StorageError
from .auth import HEADER_NOT_BEFORE, HEADER_SIGNATURE, HEADER_TIMESTAMP
from .wire import log

__all__ = ["REPLAY_NAMESPACE", "ReplayCache"]

#: namespaces of the records: ``aos.network.replay.<slot>``; the collector's mark is in
#: ``aos.network.replay`` itself
REPLAY_NAMESPACE = "aos.network.replay"
_MARK = "collected-through"


class Refused(NamedTuple):
    """Why a request is refused: the answer's status, error code, text and headers."""

    status: int
    code: str
    text: str
    headers: dict[str, str]


class ReplayCache:
    """The signatures the node has accepted, in ``storage`` (``config.auth``'s
    ``signature_max_age``; time from ``clock``)."""

    def __init__(self, storage: StorageManager, config: NetworkConfig, clock: Clock) -> None:
        self.storage = storage
        self.clock = clock
        self.max_age = config.auth.signature_max_age
        #: seconds of timestamps per namespace
        self.slot_seconds = max(1.0, self.max_age / 10)
        #: False for a store in memory: requests signed before :attr:`started_at` are refused
        self.durable = not storage.url.lower().startswith("memory:")
        self.started_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        #: requests refused as copies of one already accepted
        self.replays = 0

    def _slot(self, stamp: float) -> int:
        return math.floor(stamp / self.slot_seconds)

    async def check(self, headers: Mapping[str, str]) -> Refused | None:
        """Record the request's signature; why it is refused when it was recorded already
        (or, on a store in memory, signed before the node started). None for an unsigned
        request (a node that accepts them has nothing to check)."""
        signature = headers.get(HEADER_SIGNATURE)
        timestamp = headers.get(HEADER_TIMESTAMP)
        if not signature or not timestamp:
            return None
        try:
            stamp = float(timestamp)
        except ValueError:
            return Refused(401, "unauthorized", f"invalid {HEADER_TIMESTAMP} header", {})
        started = self.started_at
        if not self.durable and started is not None and stamp < math.floor(started * 1e6) / 1e6:
            return Refused(
                503,
                "unavailable",
                "the request was signed before this node started and its replay records are"
                f" kept in memory: sign it again, at {HEADER_NOT_BEFORE} or later",
                {HEADER_NOT_BEFORE: f"{math.ceil(started * 1e6) / 1e6 + 1e-6:.6f}"},
            )
        key = signature.strip().removeprefix("v1=")
        try:
            first = await self.storage.put_if_absent(
                f"{REPLAY_NAMESPACE}.{self._slot(stamp)}", key, stamp
            )
        except StorageError as exc:
            return Refused(503, "unavailable", f"the replay record cannot be written: {exc}", {})
        if first:
            return None
        self.replays += 1
        return Refused(
            401, "unauthorized", "replayed request: this signature was accepted before", {}
        )

    # -- the collector -------------------------------------------------------------------

    async def collect(self) -> int:
        """Drop the records whose timestamps are past ``signature_max_age``; how many."""
        cutoff = self._slot(self.clock.now() - self.max_age) - 1  # slots entirely too old
        done = await self.storage.get(REPLAY_NAMESPACE, _MARK)
        first = int(done) + 1 if isinstance(done, int) else cutoff
        dropped = 0
        for slot in range(first, cutoff + 1):
            namespace = f"{REPLAY_NAMESPACE}.{slot}"
            while rows := await self.storage.list(namespace, limit=500):
                for key, _ in rows:
                    dropped += await self.storage.delete(namespace, key)
        if done != cutoff:
            await self.storage.put(REPLAY_NAMESPACE, _MARK, cutoff)
        return dropped

    def start(self, name: str) -> None:
        """Note the start time and run the collector (a task named ``name``)."""
        if self.started_at is None:
            self.started_at = self.clock.now()
        if self._task is None:
            self._task = asyncio.create_task(self._collecting(), name=name)

    async def stop(self) -> None:
        """Stop the collector (cancelled and awaited)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _collecting(self) -> None:
        while True:
            try:
                await self.collect()
            except StorageError as exc:
                log.warning("the replay records could not be collected (retrying): %s", exc)
            await self.clock.sleep(self.slot_seconds)
