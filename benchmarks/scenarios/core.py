"""Core bus figures, each beside a baseline measured in the same run.

* memory publish->handler throughput vs a raw asyncio.Queue producer->consumer handoff;
* memory request() round-trip p50 vs a raw two-queue asyncio ping-pong;
* SQLite at-least-once publish->handler->ack throughput with 50 concurrent publishers vs a raw
  sqlite3 WAL queue doing batches of 100 (same synchronous setting);
* memory cost per queued message in the memory engine (bytes above the payload);
* RSS with 1,000,000 messages queued on SQLite.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.types import Message, MessageType
from benchmarks.common import countdown, p50, result, task_messages

_messages = task_messages


async def _raw_queue_throughput(msgs: list[Message]) -> float:
    q: asyncio.Queue[Message] = asyncio.Queue()
    n = len(msgs)
    handler, done = countdown(n)

    async def consumer() -> None:
        for _ in range(n):
            await handler(await q.get())

    start = time.perf_counter()
    task = asyncio.create_task(consumer())
    for m in msgs:
        await q.put(m)
    await done.wait()
    elapsed = time.perf_counter() - start
    await task
    return n / elapsed


async def _bus_throughput(msgs: list[Message]) -> float:
    n = len(msgs)
    handler, done = countdown(n)
    cfg = MessageBusConfig(broker_url="memory://", max_queue_size=n + 1, prefetch=256)
    async with MessageBus(cfg) as bus:
        await bus.subscribe("sink", [MessageType.TASK], handler)
        start = time.perf_counter()
        for m in msgs:
            await bus.publish(m)
        await done.wait()
        return n / (time.perf_counter() - start)


async def _raw_ping_pong(rounds: int) -> float:
    a: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    b: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def server() -> None:
        while True:
            req = await a.get()
            if req is None:
                return
            await b.put({"answer": req["q"]})

    task = asyncio.create_task(server())
    samples = []
    for i in range(rounds):
        t = time.perf_counter()
        await a.put({"q": i})
        await b.get()
        samples.append(time.perf_counter() - t)
    await a.put(None)  # type: ignore[arg-type]
    await task
    return p50(samples) * 1e6


async def _bus_request(rounds: int) -> float:
    async with MessageBus(MessageBusConfig(broker_url="memory://")) as bus:

        async def cfo(m: Message) -> dict[str, Any]:
            return {"answer": m.content["q"]}

        await bus.subscribe("cfo", [MessageType.QUERY], cfo)
        samples = []
        for i in range(rounds):
            t = time.perf_counter()
            await bus.request(sender_id="ceo", recipient_id="cfo", content={"q": i}, timeout=10)
            samples.append(time.perf_counter() - t)
        return p50(samples) * 1e6


def _raw_sqlite_queue(path: Path, n: int, synchronous: str) -> float:
    """A plain sqlite3 WAL queue: a producer inserts in batches of 100, a consumer thread
    claims batches of 100 (select + delete) — the same durability setting as the bus."""
    body = b'{"specversion":"1.0","id":"x","source":"bench","type":"aos.task","data":{"i":1}}'

    def connect() -> sqlite3.Connection:
        c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={synchronous}")
        c.execute("PRAGMA busy_timeout=5000")
        return c

    setup = connect()
    setup.execute("CREATE TABLE IF NOT EXISTS q (seq INTEGER PRIMARY KEY, body BLOB)")
    setup.close()
    consumed = 0

    def consumer() -> None:
        nonlocal consumed
        c = connect()
        while consumed < n:
            c.execute("BEGIN IMMEDIATE")
            rows = c.execute("SELECT seq, body FROM q ORDER BY seq LIMIT 100").fetchall()
            if rows:
                c.executemany("DELETE FROM q WHERE seq=?", [(r[0],) for r in rows])
            c.execute("COMMIT")
            consumed += len(rows)
            if not rows:
                time.sleep(0.0005)
        c.close()

    start = time.perf_counter()
    t = threading.Thread(target=consumer)
    t.start()
    p = connect()
    for k in range(0, n, 100):
        p.execute("BEGIN IMMEDIATE")
        p.executemany("INSERT INTO q(body) VALUES (?)", [(body,)] * min(100, n - k))
        p.execute("COMMIT")
    t.join()
    elapsed = time.perf_counter() - start
    p.close()
    return n / elapsed


async def _bus_sqlite(path: Path, n: int, publishers: int) -> float:
    handler, done = countdown(n)

    cfg = MessageBusConfig(broker_url=f"sqlite:///{path}", max_queue_size=n + 1, prefetch=100)
    async with MessageBus(cfg) as bus:
        await bus.subscribe("sink", [MessageType.TASK], handler)
        msgs = _messages(n)
        per = n // publishers

        async def publisher(k: int) -> None:
            for m in msgs[k * per : (k + 1) * per]:
                await bus.publish(m)

        start = time.perf_counter()
        await asyncio.gather(*(publisher(k) for k in range(publishers)))
        await done.wait()
        return n / (time.perf_counter() - start)


async def _memory_engine_cost(n: int) -> tuple[float, float]:
    """Bytes per queued message above its payload (content dict), measured with tracemalloc."""
    gc.collect()
    payload_bytes = 0
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    msgs = _messages(n)
    after_msgs = tracemalloc.get_traced_memory()[0]
    # the "payload": the content dicts alone
    contents = [{"i": i} for i in range(n)]
    after_payload = tracemalloc.get_traced_memory()[0]
    payload_bytes = after_payload - after_msgs
    del contents
    cfg = MessageBusConfig(broker_url="memory://", max_queue_size=n + 1)
    async with MessageBus(cfg) as bus:
        mid = tracemalloc.get_traced_memory()[0]
        await bus.publish_batch(msgs)
        queued = tracemalloc.get_traced_memory()[0]
        assert await bus.queue_depth("sink") == n
    tracemalloc.stop()
    message_objects = (after_msgs - before) / n
    engine = (queued - mid) / n
    # above the payload: the Message object itself (minus its content) plus the engine's share
    return message_objects - payload_bytes / n + engine, payload_bytes / n


def _sqlite_million_in_child(count: int) -> float:
    """Peak RSS (MB) of a fresh process that queues ``count`` messages on SQLite: the budget
    is about the process, so nothing else this runner did may count against it."""
    code = (
        "import asyncio, sys, tempfile\n"
        "from pathlib import Path\n"
        "from benchmarks.scenarios.core import _sqlite_million\n"
        "with tempfile.TemporaryDirectory() as t:\n"
        f"    peak, _ = asyncio.run(_sqlite_million(Path(t) / 'm.db', {count}))\n"
        "print(peak)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _sqlite_million(path: Path, n: int) -> tuple[float, float]:
    gc.collect()
    start_rss = _rss_mb()
    cfg = MessageBusConfig(broker_url=f"sqlite:///{path}?synchronous=normal", max_queue_size=n + 1)
    peak = start_rss
    async with MessageBus(cfg) as bus:
        batch = 10_000
        for k in range(0, n, batch):
            await bus.publish_batch(_messages(min(batch, n - k)))
            peak = max(peak, _rss_mb())
        assert await bus.queue_depth("sink") == n
        got = await bus.get_messages("sink", limit=100)
        assert len(got) == 100
        peak = max(peak, _rss_mb())
    return peak, start_rss


async def run(quick: bool) -> list[dict[str, Any]]:
    """All core scenarios."""
    rows: list[dict[str, Any]] = []
    n = 20_000 if quick else 100_000
    msgs = _messages(n)
    raw = max([await _raw_queue_throughput(msgs) for _ in range(3)])
    ours = max([await _bus_throughput(_messages(n)) for _ in range(3)])
    rows.append(
        result(
            "memory_publish_handler_throughput",
            ours,
            "msg/s",
            "raw asyncio.Queue producer->consumer",
            raw,
            higher_is_better=True,
            target=0.5,
        )
    )

    rounds = 2000 if quick else 10_000
    raw_rt = min([await _raw_ping_pong(rounds) for _ in range(3)])
    ours_rt = min([await _bus_request(rounds) for _ in range(3)])
    rows.append(
        result(
            "memory_request_roundtrip_p50",
            ours_rt,
            "us",
            "raw two-queue asyncio ping-pong p50",
            raw_rt,
            higher_is_better=False,
            target=3.0,
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        sn = 10_000 if quick else 50_000
        raw_sql = _raw_sqlite_queue(Path(tmp) / "raw.db", sn, "FULL")
        ours_sql = await _bus_sqlite(Path(tmp) / "bus.db", sn, 50)
    rows.append(
        result(
            "sqlite_publish_handler_ack_throughput_50_publishers",
            ours_sql,
            "msg/s",
            "raw sqlite3 WAL queue, batches of 100, synchronous=FULL",
            raw_sql,
            higher_is_better=True,
            target=0.5,
        )
    )

    per_msg, _payload = await _memory_engine_cost(20_000 if quick else 100_000)
    rows.append(
        result(
            "memory_engine_bytes_per_queued_message_above_payload",
            per_msg,
            "bytes",
            "1 KB budget per message",
            1024.0,
            higher_is_better=False,
            target=1.0,
        )
    )

    count = 100_000 if quick else 1_000_000
    peak = await asyncio.to_thread(_sqlite_million_in_child, count)
    rows.append(
        result(
            f"sqlite_rss_with_{count}_queued",
            peak,
            "MB",
            "200 MB budget",
            200.0,
            higher_is_better=False,
            target=1.0,
        )
    )
    return rows
