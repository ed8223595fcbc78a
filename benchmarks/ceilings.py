"""How close can issue 2's throughput targets come? Ceilings measured beside the real figures.

    python -m benchmarks.ceilings

* memory: the raw ``asyncio.Queue`` handoff of ``benchmarks/scenarios/core.py``; a *bare*
  at-least-once skeleton (a deque, a live-id dict, one lock record per batch, an ack per
  batch: nothing else); a *featured* skeleton that adds the least the bus's contract needs
  on that path (five priority lanes, an entry per queued message with its lock token,
  attempts and deadline, a duplicate-id and depth check, the handler looked up by type, the
  current-message context for hop counts and causation ids, a publish result); and the bus.
* SQLite: the CloudEvents codec alone (encode at publish + decode at delivery, which
  DESIGN.md's wire format requires of every stored message) per message, against the time
  per message that half the raw sqlite3 queue's rate allows.

The skeletons are throwaway models for this measurement, not code of the library.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import tempfile
import time
import timeit
from collections import deque
from pathlib import Path
from types import CoroutineType
from typing import Any, Awaitable, Callable, NamedTuple

from AgentOperatingSystem.messaging.envelope import decode, encode
from AgentOperatingSystem.messaging.types import Message, MessageType
from benchmarks.common import countdown, task_messages
from benchmarks.scenarios import core

_current: contextvars.ContextVar[Any] = contextvars.ContextVar("current", default=None)


class _Bare:
    """At-least-once at its barest: queued, locked per batch, acked per batch."""

    def __init__(self) -> None:
        self.q: deque[Message] = deque()
        self.live: dict[str, Message] = {}
        self.waiter: asyncio.Future[None] | None = None

    async def publish(self, m: Message) -> None:
        if m.message_id in self.live:
            raise ValueError("duplicate")
        self.live[m.message_id] = m
        self.q.append(m)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def consume(self, handler: Callable[[Message], Awaitable[None]], n: int) -> None:
        done = 0
        while done < n:
            if not self.q:
                self.waiter = asyncio.get_running_loop().create_future()
                await self.waiter
                continue
            batch = [self.q.popleft() for _ in range(min(256, len(self.q)))]
            locked = {m.message_id: m for m in batch}
            acks = []
            for m in batch:
                try:
                    await handler(m)
                except Exception:
                    continue
                acks.append(m)
            for m in acks:
                del self.live[m.message_id]
                del locked[m.message_id]
            done += len(batch)


class _Result(NamedTuple):
    message_id: str
    queues: tuple[str, ...]


class _Entry:
    __slots__ = ("attempts", "live", "locked_until", "message", "message_id", "token")

    def __init__(self, message_id: str, message: Message) -> None:
        self.message_id = message_id
        self.message = message
        self.token = ""
        self.attempts = 0
        self.locked_until = 0.0
        self.live = True


class _Featured:
    """The bare skeleton plus the least the bus's contract needs on the same path."""

    def __init__(self) -> None:
        self.lanes: list[deque[_Entry]] = [deque() for _ in range(5)]
        self.live: dict[str, _Entry] = {}
        self.inflight: dict[str, _Entry] = {}
        self.locks: list[tuple[float, str, list[_Entry]]] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.tokens = itertools.count()

    async def publish(self, m: Message) -> _Result:
        if type(m) is not Message or m.recipient_id is None or _current.get() is not None:
            raise ValueError("not the fast path")
        live = self.live
        if m.message_id in live:
            raise ValueError("duplicate")
        if len(live) >= 10**9:
            raise ValueError("full")
        entry = _Entry(m.message_id, m)
        live[m.message_id] = entry
        self.lanes[m.priority._value_].append(entry)
        if self.waiters:
            for w in self.waiters:
                if not w.done():
                    w.set_result(None)
            self.waiters.clear()
        return _Result(m.message_id, (m.recipient_id,))

    def receive(self, n: int, lock: float) -> list[_Entry]:
        token = str(next(self.tokens))
        until = time.time() + lock
        out: list[_Entry] = []
        for lane in self.lanes:
            while lane and len(out) < n:
                e = lane.popleft()
                if not e.live or e.token:
                    continue
                e.token, e.locked_until = token, until
                e.attempts += 1
                self.inflight[e.message_id] = e
                out.append(e)
        if out:
            self.locks.append((until, token, out))
        return out

    def ack(self, entries: list[_Entry]) -> list[bool]:
        now = time.time()
        out = []
        for d in entries:
            e = self.inflight.get(d.message_id)
            if e is None or e.token != d.token or e.locked_until <= now:
                out.append(False)
                continue
            del self.inflight[d.message_id]
            del self.live[d.message_id]
            e.token, e.live = "", False
            out.append(True)
        return out

    async def consume(self, handlers: dict[Any, Any], n: int) -> None:
        done = 0
        held: dict[str, _Entry] = {}
        while done < n:
            batch = self.receive(256, 30.0)
            if not batch:
                w = asyncio.get_running_loop().create_future()
                self.waiters.append(w)
                await w
                continue
            for d in batch:
                held[d.message_id] = d
            acks = []
            for d in batch:
                m = d.message
                handler = handlers.get(m.message_type) or handlers.get(None)
                token = _current.set((self, m))
                try:
                    r = handler(m)
                    if type(r) is CoroutineType:
                        await r
                except Exception:
                    _current.reset(token)
                    continue
                _current.reset(token)
                acks.append(d)
            self.ack(acks)
            for d in acks:
                held.pop(d.message_id, None)
            done += len(batch)


async def _skeleton(msgs: list[Message], featured: bool) -> float:
    n = len(msgs)
    handler, done = countdown(n)
    if featured:
        f = _Featured()
        task = asyncio.create_task(f.consume({MessageType.TASK: handler}, n))
        publish: Callable[[Message], Awaitable[Any]] = f.publish
    else:
        b = _Bare()
        task = asyncio.create_task(b.consume(handler, n))
        publish = b.publish
    await asyncio.sleep(0)
    start = time.perf_counter()
    for m in msgs:
        await publish(m)
    await done.wait()
    elapsed = time.perf_counter() - start
    await task
    return n / elapsed


async def main() -> None:
    """Print the memory ceilings (best of 3 each) and the SQLite codec budget."""
    msgs = task_messages(200_000)
    best: dict[str, float] = {"raw": 0.0, "bare": 0.0, "featured": 0.0, "bus": 0.0}
    for _ in range(3):
        best["raw"] = max(best["raw"], await core._raw_queue_throughput(msgs))
        best["bare"] = max(best["bare"], await _skeleton(msgs, featured=False))
        best["featured"] = max(best["featured"], await _skeleton(msgs, featured=True))
        best["bus"] = max(best["bus"], await core._bus_throughput(msgs))
    for name, value in best.items():
        print(f"memory {name:9s} {value:12,.0f} msg/s  ratio to raw {value / best['raw']:.2f}")
    m = task_messages(1)[0]
    body = encode(m)
    n = 20_000
    codec = (
        timeit.timeit(lambda: encode(m), number=n) + timeit.timeit(lambda: decode(body), number=n)
    ) / n
    with tempfile.TemporaryDirectory() as tmp:
        raw = core._raw_sqlite_queue(Path(tmp) / "raw.db", 50_000, "FULL")
    budget = 1 / (raw / 2)
    print(
        f"sqlite raw queue {raw:,.0f} msg/s: half of it leaves {budget * 1e6:.1f} us per message;"
        f" encode + decode alone take {codec * 1e6:.1f} us"
    )


if __name__ == "__main__":
    asyncio.run(main())
