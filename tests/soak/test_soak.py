"""Long load runs (``make soak``), kept out of the default test run by the ``slow`` marker."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.support.engines import LOCAL_ENGINES, engine_url
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(params=LOCAL_ENGINES)
async def local_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh place on each engine of this process in turn."""
    async with engine_url(request, request.param, tmp_path, name="soak") as url:
        yield url


@pytest.fixture
async def nats_engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh namespace on the session nats-server."""
    async with engine_url(request, "nats", tmp_path) as url:
        yield url


async def test_soak_mixed_traffic_loses_nothing(local_url: str) -> None:
    """200,000 messages to 20 agents with 5% handler failures: every message is handled or
    dead-lettered, exactly accounted for."""
    total, agents = 200_000, [f"agent_{i}" for i in range(20)]
    rng = random.Random(7)
    handled: set[str] = set()
    cfg = MessageBusConfig(
        broker_url=local_url,
        max_queue_size=total,
        poll_interval=0.02,
        default_retry_policy={"max_attempts": 2, "initial_delay": 0.0},
    )
    async with MessageBus(cfg) as bus:

        async def handler(msg: Message) -> None:
            if msg.content["fail"]:
                raise RuntimeError("injected")
            handled.add(msg.message_id)

        for agent in agents:
            await bus.subscribe(agent, [MessageType.TASK], handler)
        failing = 0
        for _ in range(0, total, 1000):
            batch = []
            for _ in range(1000):
                fail = rng.random() < 0.05
                failing += fail
                batch.append(
                    Message(
                        message_type=MessageType.TASK,
                        sender_id="soak",
                        recipient_id=rng.choice(agents),
                        content={"fail": fail},
                    )
                )
            await bus.publish_batch(batch)

        async def dead_letters() -> int:
            return sum([await bus.dead_letter_depth(a) for a in agents])

        async def accounted_for() -> bool:
            return len(handled) + await dead_letters() == total

        await eventually(accounted_for, 600, "every message handled or dead-lettered", interval=0.1)
        assert len(handled) == total - failing
        assert await dead_letters() == failing


async def test_soak_nats_requests_handed_off_lose_nothing(nats_engine_url: str) -> None:
    """3,000 requests, 50 at a time, to an agent served by two buses whose handler fails 5%
    of attempts; one responder bus stops half-way and a new one starts. Every request is
    answered or fails with RequestFailedError, each failure is a dead letter, none times out."""
    from AgentOperatingSystem.messaging.errors import RequestFailedError

    total = 3_000
    rng = random.Random(11)

    def config(**extra: object) -> MessageBusConfig:
        return MessageBusConfig(broker_url=nats_engine_url, storage_url="memory://", **extra)  # type: ignore[arg-type]

    policy = {"max_attempts": 2, "initial_delay": 0.0}

    async def cfo(msg: Message) -> dict[str, int]:
        if rng.random() < 0.05:
            raise RuntimeError("injected")
        return {"n": msg.content["n"]}

    responders = [
        MessageBus(config(default_retry_policy=policy, shutdown_timeout=5)) for _ in range(2)
    ]
    for r in responders:
        await r.start()
        await r.subscribe("cfo", [MessageType.QUERY], cfo)
    answered: list[int] = []
    failed: list[int] = []
    half = asyncio.Event()
    async with MessageBus(config()) as asker:
        semaphore = asyncio.Semaphore(50)

        async def ask(n: int) -> None:
            async with semaphore:
                try:
                    answer = await asker.request(recipient_id="cfo", content={"n": n}, timeout=60)
                except RequestFailedError:
                    failed.append(n)
                else:
                    assert answer.content == {"n": n}
                    answered.append(n)
                if len(answered) + len(failed) >= total // 2:
                    half.set()

        tasks = [asyncio.create_task(ask(n)) for n in range(total)]
        await asyncio.wait_for(half.wait(), 300)
        await responders[0].stop()  # its held handoffs go back to the queue
        late = MessageBus(config(default_retry_policy=policy))
        await late.start()
        await late.subscribe("cfo", [MessageType.QUERY], cfo)
        responders.append(late)
        await asyncio.gather(*tasks)
        assert sorted(answered + failed) == list(range(total))
        assert await asker.dead_letter_depth("cfo") == len(failed)
    for r in responders[1:]:
        await r.stop()
    taken = sum(getattr(r.broker, "handoffs_taken", 0) for r in responders)
    # both paths ran: handed off while a consumer was idle, stored while it was behind
    assert 0 < taken < total


async def test_soak_network_batches_lose_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 sends, 64 at a time, from one node to another that answers 503 to 2% of the
    messages the first time it sees them: every message arrives exactly once, nothing is
    dead-lettered, and the sends went in far fewer requests than messages."""
    from AgentOperatingSystem.config.network import NetworkConfig
    from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol
    from AgentOperatingSystem.storage.manager import StorageManager

    total = 20_000
    secret = "soak-secret-0123456789abcdef"
    storage = StorageManager("memory://")
    net = {"host": "127.0.0.1", "port": 0, "auth_secret": secret, "retry_initial_delay": 0.0}
    bus_cfg = MessageBusConfig(broker_url="memory://", max_queue_size=total)
    counts: dict[int, int] = {}
    async with MessageBus(bus_cfg) as bus_a, MessageBus(bus_cfg) as bus_b:
        a = NetworkProtocol(NetworkConfig(**net), bus_a, storage=storage)  # type: ignore[arg-type]
        b = NetworkProtocol(NetworkConfig(**net), bus_b, storage=storage)  # type: ignore[arg-type]
        async with a, b:
            rng = random.Random(5)
            refused: set[str] = set()
            admit = b._admit

            async def flaky(envelope: object) -> tuple[int, str, str, bool]:
                key = envelope.get("id") if isinstance(envelope, dict) else None
                if key is not None and key not in refused and rng.random() < 0.02:
                    refused.add(key)
                    return 503, "unavailable", "injected", False
                return await admit(envelope)

            monkeypatch.setattr(b, "_admit", flaky)

            async def sink(msg: Message) -> None:
                counts[msg.content["i"]] = counts.get(msg.content["i"], 0) + 1

            await bus_b.subscribe("sink", None, sink)
            await b.register_agent("sink")
            before = a.pool.requests_sent
            semaphore = asyncio.Semaphore(64)

            async def send(i: int) -> None:
                async with semaphore:
                    await a.send_message("me", "sink", {"i": i})

            await asyncio.gather(*(send(i) for i in range(total)))
            requests = a.pool.requests_sent - before
            await eventually(
                lambda: len(counts) == total, 30, "every message delivered", interval=0.05
            )
            assert sorted(counts) == list(range(total))
            assert set(counts.values()) == {1}
            assert await a.get_failed_messages("me") == []
            assert refused  # the injected failures happened, and were retried
            assert requests < total / 4
    await storage.close()
