"""Errors of the public API that only a particular use brings about.

``AmbiguousMessageError``: ``acknowledge``/``nack`` by message id alone when several agents
on the bus hold a message with that id (the same message published to two agents' queues,
both received). The bus settles nothing then; naming the agent settles that agent's copy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.errors import (
    AmbiguousMessageError,
    DeliveryError,
    UnknownMessageError,
)
from tests.support.messages import task


@pytest.fixture
async def bus(each_engine_url: str) -> AsyncIterator[MessageBus]:
    config = MessageBusConfig(broker_url=each_engine_url, poll_interval=0.05)
    async with MessageBus(config) as started:
        yield started


async def held_by_two(bus: MessageBus, message_id: str) -> None:
    """Publish one id to agents a and b and receive it as both."""
    await bus.publish(task("a", 1, message_id=message_id))
    await bus.publish(task("b", 2, message_id=message_id))
    for agent, n in (("a", 1), ("b", 2)):
        (got,) = await bus.get_messages(agent)
        assert (got.message_id, got.content) == (message_id, {"n": n})


async def test_ack_by_id_held_by_two_agents_is_ambiguous(bus: MessageBus) -> None:
    await held_by_two(bus, "m-1")
    with pytest.raises(AmbiguousMessageError) as info:
        await bus.acknowledge("m-1")
    assert isinstance(info.value, DeliveryError)
    assert "['a', 'b']" in str(info.value) and "'m-1'" in str(info.value)
    assert "agent_id" in str(info.value)
    # nothing was settled: both copies are still held, and each can be acked by its agent
    assert [await bus.queue_depth(agent) for agent in ("a", "b")] == [1, 1]
    await bus.acknowledge("m-1", "a")
    assert await bus.queue_depth("a") == 0
    # one holder left: the id alone is no longer ambiguous
    await bus.acknowledge("m-1")
    assert await bus.queue_depth("b") == 0
    with pytest.raises(UnknownMessageError):
        await bus.acknowledge("m-1")


async def test_nack_by_id_held_by_two_agents_is_ambiguous(bus: MessageBus) -> None:
    await held_by_two(bus, "m-2")
    with pytest.raises(AmbiguousMessageError):
        await bus.nack("m-2", error="no")
    assert await bus.get_messages("a") == [] and await bus.get_messages("b") == []
    await bus.nack("m-2", "b", delay=0)
    (again,) = await bus.get_messages("b")
    assert again.content == {"n": 2}
    await bus.acknowledge("m-2", "b")
    await bus.acknowledge("m-2")
    assert [await bus.queue_depth(agent) for agent in ("a", "b")] == [0, 0]
