"""How close can issue 2's throughput targets come? Ceilings measured beside the real figures.

    python -m benchmarks.ceilings [--compiled]

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
* ``--compiled``: the memory skeletons (``benchmarks/skeletons.py``) once more, compiled to
  a C extension with mypyc, to see whether compiling the hot path would lift the ceiling.

The skeletons are throwaway models for this measurement, not code of the library.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import queue
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any, Awaitable, Callable

from AgentOperatingSystem.messaging.codec.envelope import decode, encode
from AgentOperatingSystem.messaging.types import Message, MessageType
from benchmarks import skeletons
from benchmarks.common import countdown, task_messages
from benchmarks.scenarios import core


async def _skeleton(msgs: list[Message], featured: bool, models: ModuleType = skeletons) -> float:
    n = len(msgs)
    handler, done = countdown(n)
    if featured:
        f = models.Featured()
        task = asyncio.create_task(f.consume({MessageType.TASK: handler}, n))
        publish: Callable[[Message], Awaitable[Any]] = f.publish
    else:
        b = models.Bare()
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


def _compiled_skeletons(folder: Path) -> ModuleType:
    """``benchmarks/skeletons.py`` compiled with mypyc (a C compiler is needed), imported
    under another name beside the interpreted one."""
    source = folder / "aos_compiled_skeletons.py"
    shutil.copy(Path(__file__).with_name("skeletons.py"), source)
    subprocess.run(
        [sys.executable, "-m", "mypyc", source.name],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=600,
    )
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module("aos_compiled_skeletons")
    finally:
        sys.path.remove(str(folder))
    assert module.__file__ is not None and module.__file__.endswith(".so"), module.__file__
    return module


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
    compiled = None
    build = tempfile.TemporaryDirectory()
    if "--compiled" in sys.argv[1:]:
        compiled = _compiled_skeletons(Path(build.name))
    best: dict[str, float] = {"raw": 0.0, "bare": 0.0, "featured": 0.0}
    if compiled is not None:
        best.update({"bare, mypyc": 0.0, "featured, mypyc": 0.0})
    best["bus"] = 0.0
    for _ in range(3):
        best["raw"] = max(best["raw"], await core._raw_queue_throughput(msgs))
        best["bare"] = max(best["bare"], await _skeleton(msgs, featured=False))
        best["featured"] = max(best["featured"], await _skeleton(msgs, featured=True))
        if compiled is not None:
            for name, featured in (("bare, mypyc", False), ("featured, mypyc", True)):
                rate = await _skeleton(msgs, featured, compiled)
                best[name] = max(best[name], rate)
        best["bus"] = max(best["bus"], await core._bus_throughput(msgs))
    for name, value in best.items():
        print(f"memory {name:16s} {value:12,.0f} msg/s  ratio to raw {value / best['raw']:.2f}")
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
    build.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
