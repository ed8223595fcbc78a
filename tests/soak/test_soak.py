"""Long load runs (``make soak``), kept out of the default test run by the ``slow`` marker."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.types import Message, MessageType

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_soak_mixed_traffic_loses_nothing(engine: str, tmp_path: Path) -> None:
    """200,000 messages to 20 agents with 5% handler failures: every message is handled or
    dead-lettered, exactly accounted for."""
    url = "memory://" if engine == "memory" else f"sqlite:///{tmp_path / 'soak.db'}"
    total, agents = 200_000, [f"agent_{i}" for i in range(20)]
    rng = random.Random(7)
    handled: set[str] = set()
    cfg = MessageBusConfig(broker_url=url, max_queue_size=total, poll_interval=0.02,
                           default_retry_policy={"max_attempts": 2, "initial_delay": 0.0})
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
                batch.append(Message(message_type=MessageType.TASK, sender_id="soak",
                                     recipient_id=rng.choice(agents), content={"fail": fail}))
            await bus.publish_batch(batch)
        for _ in range(6000):
            dead = sum([await bus.dead_letter_depth(a) for a in agents])
            if len(handled) + dead == total:
                break
            await asyncio.sleep(0.1)
        assert len(handled) == total - failing
        assert dead == failing
