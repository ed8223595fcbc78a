"""What the A2A tests share: a started node on a bus (memory, or SQLite files for durable
runs), JSON-RPC over plain HTTP, and a client of the official a2a-sdk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.client.client import Client
from a2a.types.a2a_pb2 import Message as A2AMessage
from a2a.types.a2a_pb2 import Part, Role, SendMessageConfiguration, SendMessageRequest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.config.network import NetworkConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol
from AgentOperatingSystem.storage.manager import StorageManager
from tests.network.nodes import SECRET

__all__ = ["Node", "rpc", "rpc_raw", "running_node", "sdk_client", "user_message"]


@dataclass
class Node:
    """A started node and its bus."""

    protocol: NetworkProtocol
    bus: MessageBus

    @property
    def url(self) -> str:
        return self.protocol.url

    def agent_url(self, agent_id: str) -> str:
        return f"{self.url}/agents/{agent_id}"


@asynccontextmanager
async def running_node(
    broker_url: str = "memory://",
    storage_url: str | None = None,
    conversations: bool = False,
    **config: Any,
) -> AsyncIterator[Node]:
    """A node on 127.0.0.1 (free port) over a bus on ``broker_url``, its registry and tasks
    in ``storage_url`` (memory when None), with a ConversationSystem on that store when
    ``conversations``; stopped (bus too) on exit."""
    bus = MessageBus(
        MessageBusConfig(broker_url=broker_url, default_retry_policy={"max_attempts": 1})
    )
    await bus.start()
    storage = StorageManager(storage_url or "memory://")
    protocol = NetworkProtocol(
        NetworkConfig(host="127.0.0.1", port=0, auth_secret=SECRET, **config),
        bus,
        storage=storage,
        conversations=ConversationSystem(storage) if conversations else None,
    )
    try:
        await protocol.start()
        yield Node(protocol, bus)
    finally:
        await protocol.stop()
        await bus.stop()
        await storage.close()


async def rpc_raw(
    url: str, payload: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """POST ``payload`` (bytes, or JSON); the status and the raw body."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=body, headers=headers or {}) as resp:
            return resp.status, await resp.read()


async def rpc(url: str, payload: Any, headers: dict[str, str] | None = None) -> Any:
    """POST ``payload``; the JSON answer (the body must be JSON)."""
    status, body = await rpc_raw(url, payload, headers)
    assert status == 200, (status, body)
    return json.loads(body)


def user_message(
    text: str,
    *,
    message_id: str = "m-1",
    task_id: str = "",
    context_id: str = "",
    immediate: bool = False,
) -> SendMessageRequest:
    """A user's text message, for the a2a-sdk client."""
    return SendMessageRequest(
        message=A2AMessage(
            role=Role.ROLE_USER,
            message_id=message_id,
            parts=[Part(text=text)],
            task_id=task_id,
            context_id=context_id,
        ),
        configuration=SendMessageConfiguration(return_immediately=immediate),
    )


@asynccontextmanager
async def sdk_client(
    url: str, *, streaming: bool = False, headers: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    """An a2a-sdk client of the agent at ``url`` (built from its card)."""
    async with httpx.AsyncClient(headers=headers or {}, timeout=30) as hc:
        factory = ClientFactory(ClientConfig(streaming=streaming, httpx_client=hc))
        client = await factory.create_from_url(url)
        try:
            yield client
        finally:
            await client.close()
