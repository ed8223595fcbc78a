"""The security layer's catch-up with a shared NATS store (issue 18): it reads what changed
(a key registered, a permission set or removed in another process), and when nothing did it
asks one small question, whatever the number of agents, and creates no consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.codec.security import BusSecurity
from AgentOperatingSystem.messaging.errors import PermissionDeniedError
from AgentOperatingSystem.messaging.types import Message, MessageType
from AgentOperatingSystem.storage.manager import StorageManager
from tests.support.nats_fixtures import new_nats_namespace
from tests.support.nats_server import NatsServer

pytestmark = pytest.mark.nats


@asynccontextmanager
async def two_processes(url: str, tmp_path: Path) -> AsyncIterator[tuple[BusSecurity, BusSecurity]]:
    """Two security layers, each on its own StorageManager of one NATS store; neither
    refreshes by itself (the test calls ``refresh``)."""
    stores = [StorageManager(url), StorageManager(url)]
    config = MessageBusConfig(enable_persistence=False, data_dir=str(tmp_path))
    layers = [BusSecurity(config, s, key_dir=None, refresh_interval=None) for s in stores]
    for layer in layers:
        await layer.start()
    try:
        yield layers[0], layers[1]
    finally:
        for layer in layers:
            await layer.close()
        for store in stores:
            await store.close()


class ApiCounter:
    """Counts the JetStream API requests and consumer creations on a server."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.consumers_created = 0
        self._nc: Any = None

    async def start(self, url: str) -> None:
        self._nc = await nats.connect(url)

        async def on_api(msg: Any) -> None:
            self.requests.append(msg.subject)

        async def on_created(msg: Any) -> None:
            self.consumers_created += 1

        await self._nc.subscribe("$JS.API.>", cb=on_api)
        await self._nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.>", cb=on_created)
        await self._nc.flush()

    async def settle(self) -> None:
        await self._nc.flush()
        await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self._nc.close()


async def test_changes_of_another_process_are_applied(
    nats_url: str, nats_namespace: str, tmp_path: Path
) -> None:
    async with two_processes(f"{nats_url}?namespace={nats_namespace}", tmp_path) as (a, b):
        await a.register_agent_keys("late")
        msg = Message(message_type=MessageType.EVENT, sender_id="late")
        await a.sign(msg)
        await a.set_permissions("x", can_publish=["task"], can_subscribe=None)
        key_id = await a.store_content_key(b"k" * 32)
        assert not b.verify(msg)
        await b.refresh()
        assert b.verify(msg)  # the new key
        with pytest.raises(PermissionDeniedError):
            b.authorize_publish("x", MessageType.QUERY)  # the new entry
        assert b.content_key(key_id) == b"k" * 32
        await a.remove_permissions("x")
        await a.forget_content_key(key_id)
        await b.refresh()
        b.authorize_publish("x", MessageType.QUERY)  # the entry is gone
        assert b.content_key(key_id) is None
        assert b.full_reloads == 1  # only at start: every catch-up read just the changes


async def test_an_idle_catch_up_costs_the_same_for_ten_or_a_hundred_agents(
    nats_private_server: NatsServer, tmp_path: Path
) -> None:
    counter = ApiCounter()
    await counter.start(nats_private_server.url)
    try:
        per_refresh: dict[int, float] = {}
        for agents in (10, 100):
            url = f"{nats_private_server.url}?namespace={new_nats_namespace()}"
            async with two_processes(url, tmp_path) as (a, b):
                for i in range(agents):
                    await a.register_agent_keys(f"agent{i}")
                    await a.set_permissions(f"agent{i}", can_publish=None, can_subscribe=None)
                await b.refresh()  # catches up with the registrations
                assert len(b.public_keys(f"agent{agents - 1}")) == 1
                await counter.settle()
                counter.requests.clear()
                for _ in range(10):
                    await b.refresh()
                await counter.settle()
                per_refresh[agents] = len(counter.requests) / 10
        assert per_refresh == {10: 1.0, 100: 1.0}  # one STREAM.INFO, nothing more
        assert counter.consumers_created == 0
    finally:
        await counter.close()
