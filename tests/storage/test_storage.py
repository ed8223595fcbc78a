"""StorageManager: every engine through the same cases, plus SQLite across processes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from AgentOperatingSystem.messaging.clock import SYSTEM_CLOCK, Clock
from AgentOperatingSystem.messaging.errors import ConfigurationError, StorageError
from AgentOperatingSystem.storage.base import StorageBackend
from AgentOperatingSystem.storage.manager import (
    StorageManager,
    register_backend,
    registered_schemes,
)
from AgentOperatingSystem.storage.memory import MemoryStorageBackend
from AgentOperatingSystem.storage.sqlite import SQLiteStorageBackend, path_from_url
from tests.support.waiting import wait_until


@pytest.fixture
async def store(each_engine_url: str) -> AsyncIterator[StorageManager]:
    manager = StorageManager(each_engine_url)
    try:
        yield manager
    finally:
        await manager.close()


class Boom(Exception):
    pass


# -- keys ------------------------------------------------------------------------------


async def test_crud(store: StorageManager) -> None:
    assert await store.get("agents", "a1") is None
    await store.put("agents", "a1", {"name": "cfo", "skills": ["finance"], "n": 1.5})
    assert await store.get("agents", "a1") == {"name": "cfo", "skills": ["finance"], "n": 1.5}
    await store.put("agents", "a1", [1, "two", None, True])
    assert await store.get("agents", "a1") == [1, "two", None, True]
    # namespaces are separate
    assert await store.get("keys", "a1") is None
    assert await store.delete("agents", "a1") is True
    assert await store.delete("agents", "a1") is False
    assert await store.get("agents", "a1") is None


async def test_values_are_copies(store: StorageManager) -> None:
    value: dict[str, Any] = {"list": [1]}
    await store.put("ns", "k", value)
    value["list"].append(2)
    got = await store.get("ns", "k")
    assert got == {"list": [1]}
    got["list"].append(3)
    assert await store.get("ns", "k") == {"list": [1]}


async def test_list_prefix_sorted_and_limit(store: StorageManager) -> None:
    for key in ["b/2", "a/1", "b/10", "b/1", "c", "b", "bé", "b\U0001f600"]:
        await store.put("ns", key, key.upper())
    await store.put("other", "b/3", 0)
    assert [k for k, _ in await store.list("ns", "b/")] == ["b/1", "b/10", "b/2"]
    assert await store.list("ns", "b/", limit=2) == [("b/1", "B/1"), ("b/10", "B/10")]
    keys = [k for k, _ in await store.list("ns")]
    assert keys == sorted(["b/2", "a/1", "b/10", "b/1", "c", "b", "bé", "b\U0001f600"])
    assert [k for k, _ in await store.list("ns", "b")] == [
        "b",
        "b/1",
        "b/10",
        "b/2",
        "bé",
        "b\U0001f600",
    ]
    assert await store.list("ns", "zzz") == []
    assert await store.list("ns", limit=0) == []
    assert await store.list("empty") == []


async def test_update_read_modify_write(store: StorageManager) -> None:
    assert await store.update("ns", "counter", lambda v: (v or 0) + 1) == 1
    assert await store.update("ns", "counter", lambda v: v + 10) == 11
    assert await store.get("ns", "counter") == 11

    def fail(value: Any) -> Any:
        raise Boom("no")

    with pytest.raises(Boom, match="no"):
        await store.update("ns", "counter", fail)
    assert await store.get("ns", "counter") == 11
    # a non-JSON result is refused and nothing is written
    with pytest.raises(StorageError, match="JSON"):
        await store.update("ns", "counter", lambda v: object())
    assert await store.get("ns", "counter") == 11


async def test_update_concurrent_tasks_lose_nothing(store: StorageManager) -> None:
    await asyncio.gather(*(store.update("ns", "c", lambda v: (v or 0) + 1) for _ in range(50)))
    assert await store.get("ns", "c") == 50


async def test_put_if_absent(store: StorageManager) -> None:
    assert await store.put_if_absent("ns", "k", "first") is True
    assert await store.put_if_absent("ns", "k", "second") is False
    assert await store.get("ns", "k") == "first"


# -- logs ------------------------------------------------------------------------------


async def test_log_append_and_read(store: StorageManager) -> None:
    assert await store.log_length("ns", "s") == 0
    assert await store.read_log("ns", "s") == []
    assert await store.read_log_tail("ns", "s", 3) == []
    seqs = [await store.append("ns", "s", {"i": i}) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert await store.append("ns", "other", "x") == 1
    assert await store.append("ns2", "s", "y") == 1
    assert await store.log_length("ns", "s") == 5
    assert await store.read_log("ns", "s") == [(i + 1, {"i": i}) for i in range(5)]
    assert await store.read_log("ns", "s", start=3) == [(3, {"i": 2}), (4, {"i": 3}), (5, {"i": 4})]
    assert await store.read_log("ns", "s", start=2, limit=2) == [(2, {"i": 1}), (3, {"i": 2})]
    assert await store.read_log("ns", "s", start=6) == []
    assert await store.read_log("ns", "s", start=0, limit=1) == [(1, {"i": 0})]
    assert await store.read_log_tail("ns", "s", 2) == [(4, {"i": 3}), (5, {"i": 4})]
    assert await store.read_log_tail("ns", "s", 10) == [(i + 1, {"i": i}) for i in range(5)]
    assert await store.read_log_tail("ns", "s", 0) == []
    assert await store.read_log("ns", "other") == [(1, "x")]


async def test_concurrent_appends_in_one_process(store: StorageManager) -> None:
    seqs = await asyncio.gather(*(store.append("ns", "s", i) for i in range(40)))
    assert sorted(seqs) == list(range(1, 41))
    entries = await store.read_log("ns", "s")
    assert sorted(v for _, v in entries) == list(range(40))


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{1, 2}, object(), {"x": float("nan")}, b"bytes"])
async def test_non_json_value_is_refused(store: StorageManager, value: Any) -> None:
    with pytest.raises(StorageError, match="JSON"):
        await store.put("ns", "k", value)
    with pytest.raises(StorageError, match="JSON"):
        await store.append("ns", "s", value)
    with pytest.raises(StorageError, match="JSON"):
        await store.put_if_absent("ns", "k", value)
    assert await store.get("ns", "k") is None
    assert await store.log_length("ns", "s") == 0


async def test_lone_surrogate_text_round_trips(store: StorageManager) -> None:
    await store.put("ns", "k", {"t": "a\ud800b"})
    assert await store.get("ns", "k") == {"t": "a\ud800b"}


@pytest.mark.parametrize("bad", ["", None, 3])
async def test_bad_names_are_refused(store: StorageManager, bad: Any) -> None:
    with pytest.raises(StorageError):
        await store.put(bad, "k", 1)
    with pytest.raises(StorageError):
        await store.get("ns", bad)
    with pytest.raises(StorageError):
        await store.append("ns", bad, 1)


async def test_bad_limits_are_refused(store: StorageManager) -> None:
    with pytest.raises(StorageError):
        await store.list("ns", limit=-1)
    with pytest.raises(StorageError):
        await store.read_log("ns", "s", limit=-1)
    with pytest.raises(StorageError):
        await store.read_log_tail("ns", "s", -1)


async def test_closed_manager_refuses_use(store: StorageManager) -> None:
    await store.put("ns", "k", 1)
    await store.close()
    await store.close()  # idempotent
    assert not store.is_open
    with pytest.raises(StorageError, match="closed"):
        await store.get("ns", "k")


async def test_opens_lazily_and_as_context_manager(store: StorageManager) -> None:
    assert not store.is_open
    await store.put("ns", "k", 1)
    assert store.is_open
    async with StorageManager("memory://") as other:
        assert other.is_open
        await other.put("ns", "k", 2)
        assert await other.get("ns", "k") == 2
    assert not other.is_open


@pytest.mark.parametrize(
    "url", ["redis://localhost", "nosuch://x", "not a url", "", "sqlite://relative.db"]
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        StorageManager(url)


def test_unknown_scheme_names_the_supported_ones() -> None:
    with pytest.raises(ConfigurationError, match="memory") as info:
        StorageManager("redis://localhost")
    assert isinstance(info.value, ValueError)
    assert "sqlite" in str(info.value)


def test_sqlite_url_paths() -> None:
    assert path_from_url("sqlite:///data/aos.db") == "data/aos.db"
    assert path_from_url("sqlite:////tmp/x.db") == "/tmp/x.db"
    assert path_from_url("sqlite:///:memory:") == ":memory:"
    with pytest.raises(ConfigurationError):
        path_from_url("sqlite:///")


async def test_register_backend_plugs_in_a_scheme() -> None:
    made: list[str] = []

    def factory(url: str, clock: Clock) -> StorageBackend:
        made.append(url)
        return MemoryStorageBackend()

    register_backend("testmem", factory)
    try:
        assert "testmem" in registered_schemes()
        async with StorageManager("testmem://anything", clock=SYSTEM_CLOCK) as manager:
            await manager.put("ns", "k", 1)
            assert await manager.get("ns", "k") == 1
            assert isinstance(manager.backend, StorageBackend)
        assert made == ["testmem://anything"]
    finally:
        from AgentOperatingSystem.storage import manager as manager_module

        manager_module._BACKENDS.pop("testmem", None)
    with pytest.raises(ConfigurationError):
        register_backend("", factory)


# -- SQLite specifics ------------------------------------------------------------------


async def test_sqlite_persists_and_uses_wal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/deep/er/aos.db"
    async with StorageManager(url) as first:
        await first.put("ns", "k", {"v": 1})
        await first.append("ns", "s", "a")
    assert (tmp_path / "deep" / "er" / "aos.db").exists()
    async with StorageManager(url) as second:
        assert await second.get("ns", "k") == {"v": 1}
        assert await second.append("ns", "s", "b") == 2
    conn = sqlite3.connect(tmp_path / "deep" / "er" / "aos.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_sqlite_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with StorageManager("sqlite:///data/rel.db") as manager:
        await manager.put("ns", "k", 1)
    assert (tmp_path / "data" / "rel.db").exists()


async def test_sqlite_in_memory_url() -> None:
    async with StorageManager("sqlite:///:memory:") as manager:
        await manager.put("ns", "k", 1)
        assert await manager.get("ns", "k") == 1


async def test_sqlite_errors_are_translated(tmp_path: Path) -> None:
    (tmp_path / "isadir.db").mkdir()
    manager = StorageManager(f"sqlite:///{tmp_path}/isadir.db")
    with pytest.raises(StorageError) as info:
        await manager.put("ns", "k", 1)
    assert isinstance(info.value.__cause__, sqlite3.Error)
    await manager.close()


async def test_sqlite_waits_for_another_writer(tmp_path: Path) -> None:
    """A write lock held by another connection delays a write instead of failing it."""
    path = tmp_path / "locked.db"
    async with StorageManager(f"sqlite:///{path}") as manager:
        await manager.put("ns", "k", 0)
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            write = asyncio.ensure_future(manager.put("ns", "k", 1))
            # the write cannot finish while the lock is held; release it from a thread
            await asyncio.sleep(0)
            assert not write.done()
            await asyncio.to_thread(blocker.execute, "COMMIT")
            await write
        finally:
            blocker.close()
        assert await manager.get("ns", "k") == 1


def test_sqlite_backend_config_errors() -> None:
    with pytest.raises(ConfigurationError):
        SQLiteStorageBackend("")
    with pytest.raises(ConfigurationError):
        SQLiteStorageBackend("x.db", busy_timeout=0)


_WORKER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from AgentOperatingSystem.storage.manager import StorageManager

    url, name, count, ready, go = sys.argv[1:6]
    count = int(count)

    async def main():
        async with StorageManager(url) as store:
            await store.log_length("ns", "shared")  # open the file before the start signal
            open(ready, "w").close()
            while not os.path.exists(go):
                time.sleep(0.001)
            seqs = []
            for i in range(count):
                seqs.append(await store.append("ns", "shared", {"who": name, "i": i}))
                await store.update("ns", "counter", lambda v: (v or 0) + 1)
            print(json.dumps(seqs))

    asyncio.run(main())
    """
)


def test_sqlite_two_processes_append_and_update(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    url = f"sqlite:///{db}"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    go = tmp_path / "go"
    count = 300
    procs = []
    readies = []
    for name in ("p1", "p2"):
        ready = tmp_path / f"ready-{name}"
        readies.append(ready)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), url, name, str(count), str(ready), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:

        def started() -> bool:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            return all(r.exists() for r in readies)

        wait_until(started, 60, "the workers to open the file")
        go.touch()
        outputs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert err == ""
    seqs = [json.loads(out) for out, _ in outputs]
    everything = seqs[0] + seqs[1]
    assert sorted(everything) == list(range(1, 2 * count + 1))  # unique and gap-free
    for own in seqs:
        assert own == sorted(own)

    async def check() -> None:
        async with StorageManager(url) as store:
            assert await store.get("ns", "counter") == 2 * count
            entries = await store.read_log("ns", "shared")
            assert [s for s, _ in entries] == list(range(1, 2 * count + 1))
            for who, own in zip(("p1", "p2"), seqs, strict=True):
                mine = {s: v for s, v in entries if v["who"] == who}
                assert sorted(mine) == own
                assert [mine[s]["i"] for s in own] == list(range(count))

    asyncio.run(check())
    assert os.path.exists(db)
