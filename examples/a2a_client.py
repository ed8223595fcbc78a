"""A2A interop: the official ``a2a-sdk`` client talks to an AOS agent.

A node hosts the ``analyst`` agent (a QUERY handler on its bus). Every hosted agent speaks
A2A: its Agent Card is at ``/agents/analyst/.well-known/agent-card.json`` and its JSON-RPC
endpoint at ``/agents/analyst``. The SDK client reads the card, sends a message, and gets a
completed task whose artifact is the handler's answer; ``GetTask`` fetches it again.

Run: ``.venv/bin/python examples/a2a_client.py`` (``a2a-sdk`` and ``httpx`` come with the
``dev`` extra)
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import GetTaskRequest, Part, Role, SendMessageRequest, TaskState
from a2a.types.a2a_pb2 import Message as A2AMessage

from AgentOperatingSystem.config.network import NetworkConfig
from AgentOperatingSystem.messaging import Message, MessageBus, MessageBusConfig, MessageType
from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol


async def main() -> None:
    async def analyst(msg: Message) -> dict[str, Any]:
        print(f"analyst <- {msg.sender_id}: {msg.content['text']}")
        return {"text": f"analysis of: {msg.content['text']}"}

    config = NetworkConfig(host="127.0.0.1", port=0, allow_unsigned=True)
    async with (
        MessageBus(MessageBusConfig(broker_url="memory://")) as bus,
        NetworkProtocol(config, bus) as node,
    ):
        await bus.subscribe("analyst", [MessageType.QUERY], analyst)
        await node.register_agent(
            "analyst",
            capabilities=["financial_analysis"],
            metadata={"name": "Financial analyst", "description": "Looks at numbers"},
        )
        async with httpx.AsyncClient() as http:
            card = await A2ACardResolver(http, f"{node.url}/agents/analyst").get_agent_card()
            print("agent card:", card.name, "| skills:", [s.id for s in card.skills])
            client = ClientFactory(ClientConfig(streaming=False, httpx_client=http)).create(card)
            request = SendMessageRequest(
                message=A2AMessage(
                    role=Role.ROLE_USER,
                    message_id="m-1",
                    context_id="board-meeting",
                    parts=[Part(text="Q3 revenue")],
                )
            )
            (event,) = [e async for e in client.send_message(request)]
            task = event.task
            print("task state:", TaskState.Name(task.status.state))
            print("artifact:", task.artifacts[0].parts[0].text)
            again = await client.get_task(GetTaskRequest(id=task.id))
            print("GetTask:", TaskState.Name(again.status.state))
            await client.close()


if __name__ == "__main__":
    asyncio.run(main())
