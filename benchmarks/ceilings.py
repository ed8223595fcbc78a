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
  per message that half the raw sqlite3 queue's rate allows; and a *durable skeleton*
  measured the way the bus is (50 publisher tasks, each awaiting its own group commit on one
  worker thread; one consumer task taking batches of 100 under a lock flag and deleting them
  after its "handler"): with no codec at all (a fixed body), with the CloudEvents codec, and
  with the least codec that still rebuilds a Message at delivery (four fields and the
  content's JSON). The skeleton has no priorities, lock tokens or deadlines, dedup, depth,
  id index, retries or dead letters.

The skeletons are throwaway models for this measurement, not code of the library.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import queue
import sqlite3
import tempfile
import threading
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


class _GroupCommit:
    """The durable skeleton: operations queued to one worker thread, each batch of them run
    in one transaction (one fsync), their futures resolved on the loop together."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ops: queue.SimpleQueue[tuple[str, Any, asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self.loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def call(self, kind: str, arg: Any) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        self.ops.put((kind, arg, fut))
        return fut

    def close(self) -> None:
        self.ops.put(None)
        self.thread.join()

    def _run(self) -> None:
        c = sqlite3.connect(self.path, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, body BLOB, locked INTEGER DEFAULT 0)")
        while (first := self.ops.get()) is not None:
            group = [first]
            while True:
                try:
                    nxt = self.ops.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.ops.put(None)
                    break
                group.append(nxt)
            c.execute("BEGIN IMMEDIATE")
            c.executemany(
                "INSERT INTO q(body) VALUES (?)", [(a,) for k, a, _ in group if k == "put"]
            )
            results: list[tuple[asyncio.Future[Any], Any]] = []
            for kind, arg, fut in group:
                value: Any = None
                if kind == "get":
                    value = c.execute(
                        "SELECT seq, body FROM q WHERE locked=0 ORDER BY seq LIMIT 100"
                    ).fetchall()
                    c.executemany("UPDATE q SET locked=1 WHERE seq=?", [(r[0],) for r in value])
                elif kind == "ack":
                    c.executemany("DELETE FROM q WHERE seq=?", [(s,) for s in arg])
                results.append((fut, value))
            c.execute("COMMIT")
            self.loop.call_soon_threadsafe(_resolve_all, results)
        c.close()


def _resolve_all(results: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for fut, value in results:
        fut.set_result(value)


def _minimal_encode(m: Message) -> bytes:
    assert m.recipient_id is not None
    fields = (m.message_id, m.sender_id, m.recipient_id, m.message_type._value_)
    return "\x1f".join((*fields, json.dumps(m.content))).encode()


def _minimal_decode(body: bytes) -> Message:
    mid, sender, recipient, kind, content = body.decode().split("\x1f", 4)
    return Message(
        message_id=mid,
        sender_id=sender,
        recipient_id=recipient,
        message_type=MessageType(kind),
        content=json.loads(content),
    )


async def _durable_skeleton(path: Path, msgs: list[Message], codec: str) -> float:
    """50 publishers and one consumer over :class:`_GroupCommit`; ``codec`` is ``none``,
    ``cloudevents`` or ``minimal``."""
    fixed = encode(msgs[0])
    enc: Callable[[Message], bytes] = {
        "none": lambda m: fixed,
        "cloudevents": encode,
        "minimal": _minimal_encode,
    }[codec]
    dec: Callable[[bytes], Any] = {
        "none": lambda b: None,
        "cloudevents": decode,
        "minimal": _minimal_decode,
    }[codec]
    store = _GroupCommit(path)
    n = len(msgs)
    publishers = 50
    per = n // publishers

    async def consumer() -> None:
        got = 0
        while got < per * publishers:
            rows = await store.call("get", None)
            if not rows:
                await asyncio.sleep(0.0005)
                continue
            for row in rows:
                dec(row[1])  # the "handler"
            got += len(rows)
            await store.call("ack", [row[0] for row in rows])

    async def publisher(k: int) -> None:
        for m in msgs[k * per : (k + 1) * per]:
            await store.call("put", enc(m))

    start = time.perf_counter()
    task = asyncio.create_task(consumer())
    await asyncio.gather(*(publisher(k) for k in range(publishers)))
    await task
    elapsed = time.perf_counter() - start
    store.close()
    return per * publishers / elapsed


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
    sqlite: dict[str, float] = {"raw": 0.0, "none": 0.0, "minimal": 0.0, "cloudevents": 0.0}
    sqlite_msgs = task_messages(50_000)
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            sqlite["raw"] = max(
                sqlite["raw"], core._raw_sqlite_queue(folder / "raw.db", 50_000, "FULL")
            )
            for name in ("none", "minimal", "cloudevents"):
                rate = await _durable_skeleton(folder / f"{name}.db", sqlite_msgs, name)
                sqlite[name] = max(sqlite[name], rate)
            sqlite["bus"] = max(
                sqlite.get("bus", 0.0), await core._bus_sqlite(folder / "bus.db", 50_000, 50)
            )
    raw = sqlite["raw"]
    budget = 1 / (raw / 2)
    print(
        f"sqlite raw queue {raw:,.0f} msg/s: half of it leaves {budget * 1e6:.1f} us per message;"
        f" encode + decode alone take {codec * 1e6:.1f} us"
    )
    labels = {
        "none": "durable skeleton, no codec",
        "minimal": "durable skeleton, least codec",
        "cloudevents": "durable skeleton, CloudEvents",
        "bus": "the bus",
    }
    for name, label in labels.items():
        value = sqlite[name]
        print(f"sqlite {label:30s} {value:10,.0f} msg/s  ratio to raw {value / raw:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
