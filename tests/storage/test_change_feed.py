"""The store's optional change feed (:class:`~AgentOperatingSystem.storage.base.ChangeFeed`):
what changed in a namespace since a cursor. The NATS store has it; memory and SQLite do not
(their readers re-read a namespace, as before)."""

from __future__ import annotations

from pathlib import Path

import pytest

from AgentOperatingSystem.storage.base import ChangeFeed, KeyChange
from AgentOperatingSystem.storage.manager import StorageManager


async def test_memory_and_sqlite_stores_have_no_change_feed(tmp_path: Path) -> None:
    for url in ("memory://", f"sqlite:///{tmp_path / 's.db'}"):
        store = StorageManager(url)
        try:
            assert not isinstance(store.backend, ChangeFeed)
        finally:
            await store.close()


@pytest.mark.nats
async def test_nats_store_reports_each_change_of_a_namespace_once(
    nats_url: str, nats_namespace: str
) -> None:
    async with StorageManager(f"{nats_url}?namespace={nats_namespace}") as store:
        feed = store.backend
        assert isinstance(feed, ChangeFeed)
        start = await feed.change_cursor()
        await store.put("ring", "alice", {"k": 1})
        await store.put("other", "bob", {"k": 2})  # another namespace: not reported
        await store.put("ring", "carol", {"k": 3})
        await store.put("ring", "alice", {"k": 4})  # written again: reported once, as now
        await store.delete("ring", "carol")
        now = await feed.change_cursor()
        assert now > start
        changes = await feed.changes("ring", start, now)
        # oldest first by latest write: carol's delete came after alice's second write
        assert changes == [KeyChange("alice", '{"k":4}'), KeyChange("carol", None)]
        assert await feed.changes("other", start, now) == [KeyChange("bob", '{"k":2}')]
        assert await feed.changes("ring", now, now) == []  # nothing since
        await store.put("ring", "dave", {"k": 5})
        later = await feed.changes("ring", now, await feed.change_cursor())
        assert later == [KeyChange("dave", '{"k":5}')]
        assert await feed.changes("ring", start, now) == changes  # bounded by ``until``
