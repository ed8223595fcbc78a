"""The Agent Card at the node's own well-known URI (the primary agent, configured or the
first registered), agent URLs with and without a trailing slash, and the extended card
served to authenticated clients."""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
from a2a.client import A2ACardResolver
from a2a.types.a2a_pb2 import GetExtendedAgentCardRequest

from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.network.a2a.support import Node, rpc, running_node, sdk_client, user_message


async def echo(msg: Message) -> dict[str, Any]:
    return {"text": f"echo: {msg.content['text']}"}


async def host(node: Node, *agents: str) -> None:
    for agent_id in agents:
        await node.bus.subscribe(agent_id, [MessageType.QUERY], echo)
        await node.protocol.register_agent(agent_id, metadata={"name": agent_id.title()})


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as resp:
            return resp.status, await resp.json()


async def test_the_origin_card_is_the_first_registered_agent() -> None:
    async with running_node() as node:
        status, out = await get_json(f"{node.url}/.well-known/agent-card.json")
        assert status == 404 and out["error"]["code"] == "no_agent"
        await host(node, "first", "second")
        status, card = await get_json(f"{node.url}/.well-known/agent-card.json")
        assert status == 200 and card["name"] == "First"
        assert card["supportedInterfaces"][0]["url"] == node.agent_url("first")
        # the SDK finds it from the origin alone, and talks to the agent it names
        async with httpx.AsyncClient() as hc:
            parsed = await A2ACardResolver(hc, node.url).get_agent_card()
        assert parsed.name == "First"
        async with sdk_client(node.url) as client:
            (event,) = [e async for e in client.send_message(user_message("hello"))]
        assert event.task.artifacts[0].parts[0].text == "echo: hello"


async def test_the_origin_card_is_the_configured_primary_agent() -> None:
    async with running_node(a2a_primary_agent="second") as node:
        await host(node, "first", "second")
        status, card = await get_json(f"{node.url}/.well-known/agent-card.json")
        assert status == 200 and card["name"] == "Second"
        # every agent keeps its own card
        status, card = await get_json(f"{node.agent_url('first')}/.well-known/agent-card.json")
        assert status == 200 and card["name"] == "First"


async def test_agent_urls_work_with_and_without_a_trailing_slash() -> None:
    async with running_node() as node:
        await host(node, "echo")
        request = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendMessage",
            "params": {
                "message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "x"}]}
            },
        }
        for url in (node.agent_url("echo"), node.agent_url("echo") + "/"):
            out = await rpc(url, request)
            assert out["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", url
            status, _card = await get_json(f"{url.rstrip('/')}/.well-known/agent-card.json")
            assert status == 200
        async with sdk_client(node.agent_url("echo") + "/") as client:
            (event,) = [e async for e in client.send_message(user_message("slash"))]
        assert event.task.artifacts[0].parts[0].text == "echo: slash"


async def test_the_extended_card_needs_authentication() -> None:
    async with running_node() as node:
        await host(node, "echo")
        _, card = await get_json(f"{node.url}/.well-known/agent-card.json")
        assert card["capabilities"]["extendedAgentCard"] is False
        body = {"jsonrpc": "2.0", "id": 1, "method": "GetExtendedAgentCard", "params": {}}
        out = await rpc(node.agent_url("echo"), body)
        assert out["error"]["code"] == -32004  # not declared: UnsupportedOperationError

    async with running_node(a2a_auth_token="open-sesame") as node:
        await host(node, "echo")
        _, card = await get_json(f"{node.url}/.well-known/agent-card.json")
        assert card["capabilities"]["extendedAgentCard"] is True
        assert "bearer" in card["securitySchemes"]
        out = await rpc_status(node.agent_url("echo"), {"Authorization": "Bearer wrong"})
        assert out == 401
        headers = {"Authorization": "Bearer open-sesame"}
        async with sdk_client(node.agent_url("echo"), headers=headers) as client:
            extended = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
        assert extended.name == "Echo" and extended.capabilities.extended_agent_card


async def rpc_status(url: str, headers: dict[str, str]) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "GetExtendedAgentCard", "params": {}}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body, headers=headers) as resp:
            return resp.status
