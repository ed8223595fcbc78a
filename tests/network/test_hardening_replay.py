"""Replay protection of its own (issue 20, item 5): a signed message request is accepted once,
whatever the bus's dedup window, and a restart does not reopen the window, on every engine
(the node's bus and its store on the same engine)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.codec.envelope import encode
from AgentOperatingSystem.messaging.network.auth import signature_headers
from AgentOperatingSystem.messaging.network.node import NetworkProtocol
from AgentOperatingSystem.messaging.network.replay import REPLAY_NAMESPACE
from AgentOperatingSystem.messaging.types import Message
from AgentOperatingSystem.storage.manager import StorageManager
from tests.support.engines import engine_params, engine_url

from .nodes import SECRET, cfg, inbox, memory_bus, next_message

PATH = "/aos/v1/messages"


@dataclass
class Receiver:
    """A node hosting ``target`` on a bus and store of one engine (one incarnation)."""

    bus: MessageBus
    storage: StorageManager
    node: NetworkProtocol
    received: asyncio.Queue[Message]

    async def stop(self) -> None:
        await self.node.stop()
        await self.bus.stop()
        await self.storage.close()


async def start_receiver(url: str, clock: ManualClock, port: int = 0) -> Receiver:
    """Bus (dedup window 2 s) and store on ``url``, a node on them hosting ``target``."""
    bus = MessageBus(MessageBusConfig(broker_url=url, dedup_window_seconds=2), clock=clock)
    await bus.start()
    storage = StorageManager(url)
    node = NetworkProtocol(cfg(port=port), bus, storage=storage, clock=clock)
    await node.start()
    received = await inbox(bus, "target")
    await node.register_agent("target")
    return Receiver(bus, storage, node, received)


def signed(clock: ManualClock, content: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A message request for ``target`` as a peer signs it now: body and headers."""
    body = encode(Message(sender_id="peer", recipient_id="target", content=content))
    headers = {"Content-Type": "application/cloudevents+json"}
    headers.update(signature_headers(SECRET.encode(), "POST", PATH, body, clock.now()))
    return body, headers


async def post(node: NetworkProtocol, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(node.url + PATH, data=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture(params=engine_params())
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a fresh place on each engine in turn."""
    async with engine_url(request, request.param, tmp_path) as url:
        yield url


async def test_a_replay_after_a_restart_and_past_the_dedup_window_is_refused(engine: str) -> None:
    clock = ManualClock(start=time.time())
    first = await start_receiver(engine, clock)
    port = int(first.node.url.rsplit(":", 1)[1])
    body, headers = signed(clock, {"order": 1})
    try:
        assert (await post(first.node, body, headers))[0] == 202
        assert (await next_message(first.received)).content == {"order": 1}
        clock.advance(3.2)  # past the bus's 2 s dedup window, well within signature_max_age
        status, answer = await post(first.node, body, headers)
        assert status == 401 and "replayed" in answer["error"]["message"]
    finally:
        await first.stop()

    second = await start_receiver(engine, clock, port)  # the node restarts
    try:
        clock.advance(3.2)
        status, answer = await post(second.node, body, headers)
        # a durable store remembers the signature (401); one in memory refuses anything
        # signed before the restart (503, so an honest sender signs again)
        assert (status, answer["error"]["code"]) in ((401, "unauthorized"), (503, "unavailable"))
        marker_body, marker_headers = signed(clock, {"marker": True})
        assert (await post(second.node, marker_body, marker_headers))[0] == 202
        # FIFO: had the replay been enqueued, it would arrive before the marker
        assert (await next_message(second.received)).content == {"marker": True}
        assert second.received.empty()
    finally:
        await second.stop()


async def test_replay_records_are_collected_once_their_signatures_are_stale() -> None:
    clock = ManualClock(start=time.time())
    receiver = await start_receiver("memory://", clock)
    replays = receiver.node._replays
    try:
        requests = [signed(clock, {"i": i}) for i in range(20)]
        for body, headers in requests:
            assert (await post(receiver.node, body, headers))[0] == 202
        slot = f"{REPLAY_NAMESPACE}.{int(clock.now() // replays.slot_seconds)}"
        assert len(await receiver.storage.list(slot)) == 20
        clock.advance(replays.max_age / 2)
        assert await replays.collect() == 0  # still within signature_max_age: kept
        clock.advance(replays.max_age / 2 + 2 * replays.slot_seconds)
        assert await replays.collect() == 20
        assert await receiver.storage.list(slot) == []
        body, headers = requests[0]  # and a copy now is refused as stale anyway
        status, answer = await post(receiver.node, body, headers)
        assert status == 401 and "stale" in answer["error"]["message"]
    finally:
        await receiver.stop()


async def test_an_honest_sender_is_never_taken_for_a_replay() -> None:
    sender_clock = ManualClock(start=time.time() - 5)  # 5 s behind, and frozen
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        b = NetworkProtocol(cfg(), bus_b)
        a = NetworkProtocol(cfg(max_retries=0), bus_a, clock=sender_clock)
        async with b, a:
            q = await inbox(bus_b, "target")
            await b.register_agent("target")
            await a.register_agent("target", b.url)
            msg = Message(sender_id="s", recipient_id="target", content={"once": True})
            # signed before b started (its replay records are in memory): signed again
            first = await a.send_message("s", "target", msg)
            assert not first.duplicate and a.pool._transport.resigned == 1
            # the same message again, on a clock that has not moved: a new signature, so
            # the bus's deduplication answers, not the replay check
            again = await a.send_message("s", "target", msg)
            assert again.duplicate
            assert (await next_message(q)).content == {"once": True}
            assert b._replays.replays == 0
