"""What the network tests share: the deployment secret, a node's test configuration, an
in-memory bus, an agent's inbox, and two nodes at once (:class:`Pair`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.config.network import NetworkConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.network.node import NetworkProtocol
from AgentOperatingSystem.messaging.types import Message

__all__ = ["SECRET", "Pair", "cfg", "inbox", "memory_bus", "next_message"]

#: The shared secret of the test deployment (every node signs with it).
SECRET = "network-test-secret-0123456789"


def cfg(**changes: Any) -> NetworkConfig:
    """A node on 127.0.0.1 and a free port, signing with :data:`SECRET`, one retry without
    delay, a quick outbox and no registry cache; ``changes`` on top."""
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "auth_secret": SECRET,
        "max_retries": 1,
        "retry_initial_delay": 0.0,
        "retry_jitter": 0.0,
        "outbox_poll_interval": 0.05,
        "registry_cache_seconds": 0.0,
    }
    base.update(changes)
    return NetworkConfig(**base)


def memory_bus(**changes: Any) -> MessageBus:
    """A bus on the in-memory broker (not started)."""
    return MessageBus(MessageBusConfig(broker_url="memory://", **changes))


async def inbox(bus: MessageBus, agent_id: str) -> asyncio.Queue[Message]:
    """A queue of every message ``agent_id`` receives on ``bus`` (each answered ok)."""
    q: asyncio.Queue[Message] = asyncio.Queue()

    async def handler(msg: Message) -> dict[str, Any]:
        await q.put(msg)
        return {"ok": True}

    await bus.subscribe(agent_id, None, handler)
    return q


async def next_message(q: asyncio.Queue[Message], timeout: float = 5.0) -> Message:
    """The next message of an :func:`inbox` (``TimeoutError`` after ``timeout``)."""
    return await asyncio.wait_for(q.get(), timeout)


@dataclass
class Pair:
    """Two started nodes and their buses."""

    a: NetworkProtocol
    b: NetworkProtocol
    bus_a: MessageBus
    bus_b: MessageBus
