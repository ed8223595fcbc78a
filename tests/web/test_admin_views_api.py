"""The admin routes behind the new views, without a browser: dead-letter filters (agent,
reason, time), the dry-run count, bulk purge (whole agents only), the timeline of stored
turns, and a trace of an unknown id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
from AgentOperatingSystem.messaging.types import Message, MessageType
from AgentOperatingSystem.messaging.web.dashboard import install_dashboard
from AgentOperatingSystem.storage.manager import StorageManager


@pytest_asyncio.fixture
async def setup() -> AsyncIterator[tuple[TestClient[Any, Any], MessageBus, StorageManager]]:
    async with (
        StorageManager("memory://") as storage,
        MessageBus(MessageBusConfig(broker_url="memory://", poll_interval=0.01)) as bus,
    ):
        app = web.Application()
        install_dashboard(app, bus, storage, record=True)
        async with TestClient(TestServer(app)) as client:
            yield client, bus, storage


async def _dead(bus: MessageBus, agent: str, n: int) -> None:
    async def fail(m: Message) -> None:
        raise RuntimeError("no")

    await bus.subscribe(agent, [MessageType.TASK], fail)
    for i in range(n):
        await bus.publish(
            message_type=MessageType.TASK,
            recipient_id=agent,
            content={"i": i},
            retry_policy={"max_attempts": 1},
        )
    for _ in range(300):
        if await bus.dead_letter_depth(agent) == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not dead-lettered")


async def test_dead_letters_filter_by_agent_reason_and_time_and_count_first(
    setup: tuple[TestClient[Any, Any], MessageBus, StorageManager],
) -> None:
    client, bus, _ = setup
    await _dead(bus, "a1", 2)
    await _dead(bus, "a2", 3)
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()

    async def count(**q: str) -> Any:
        resp = await client.get("/admin/dlq/count", params=q)
        assert resp.status == 200
        return await resp.json()

    assert await count() == {"count": 5, "by_agent": {"a1": 2, "a2": 3}}
    assert (await count(agent="a2"))["count"] == 3
    assert (await count(reason="max_attempts"))["count"] == 5
    assert (await count(reason="expired"))["count"] == 0
    assert (await count(since=hour_ago, until=soon))["count"] == 5
    assert (await count(until=hour_ago))["count"] == 0
    assert (await count(since=soon))["count"] == 0
    listed = await (await client.get("/admin/dlq", params={"agent": "a1"})).json()
    assert {d["agent"] for d in listed["dead_letters"]} == {"a1"}
    assert all(d["reason"] == "max_attempts" for d in listed["dead_letters"])
    bad = await client.get("/admin/dlq/count", params={"since": "yesterday"})
    assert bad.status == 400

    # A purge must take whole agents: a part of a2 is refused and nothing is deleted.
    partial = await client.post("/admin/dlq/purge", json={"agent": "a2", "limit": 1})
    assert partial.status == 409
    assert (await partial.json())["error"]["type"] == "PartialPurge"
    assert await bus.dead_letter_depth("a2") == 3
    purged = await client.post("/admin/dlq/purge", json={"agent": "a2"})
    assert await purged.json() == {"purged": 3, "by_agent": {"a2": 3}}
    assert await bus.dead_letter_depth("a1") == 2


async def test_a_stored_conversation_is_a_timeline_of_its_turns(
    setup: tuple[TestClient[Any, Any], MessageBus, StorageManager],
) -> None:
    client, _, storage = setup
    conversations = ConversationSystem(storage)
    cid = await conversations.start_conversation(["ceo", "cfo", "cto"], "plan")
    await conversations.add_message(cid, "ceo", "Q2?")
    await conversations.add_message(cid, "cfo", {"revenue": 1})
    body = await (await client.get(f"/admin/conversations/{cid}/timeline")).json()
    assert body["lanes"] == ["ceo", "cfo", "cto"]
    pairs = [(a["from"], a["to"]) for a in body["arrows"]]
    assert pairs == [("ceo", "cfo"), ("ceo", "cto"), ("cfo", "ceo"), ("cfo", "cto")]
    assert [a["index"] for a in body["arrows"]] == [0, 1, 2, 3]
    assert body["arrows"][0]["content"] == "Q2?" and not body["arrows"][0]["encrypted"]
    missing = await client.get("/admin/conversations/nope/timeline")
    assert missing.status == 404


async def test_a_query_and_the_response_its_handler_sends_are_one_tree(
    setup: tuple[TestClient[Any, Any], MessageBus, StorageManager],
) -> None:
    client, bus, _ = setup
    answered = asyncio.Event()

    async def pricer(m: Message) -> None:
        await bus.publish(
            message_type=MessageType.RESPONSE,
            sender_id="pricer",
            recipient_id="shop",
            content={"price": 3},
            correlation_id=m.message_id,
        )

    async def shop(m: Message) -> None:
        answered.set()

    await bus.subscribe("pricer", [MessageType.QUERY], pricer)
    await bus.subscribe("shop", [MessageType.RESPONSE], shop)
    query = await bus.publish(
        message_type=MessageType.QUERY, sender_id="shop", recipient_id="pricer"
    )
    await asyncio.wait_for(answered.wait(), 5)
    body = await (await client.get(f"/admin/trace/{query.message_id}")).json()
    (root,) = body["roots"]
    assert root["message_type"] == "query"
    assert [s["ok"] for s in root["steps"] if s["kind"] == "attempt"] == [True]
    (child,) = root["children"]
    assert child["message_type"] == "response" and child["causation_id"] == query.message_id
    assert [s["agent"] for s in child["steps"]] == ["shop"]
    unknown = await client.get("/admin/trace/never-seen")
    assert unknown.status == 404
