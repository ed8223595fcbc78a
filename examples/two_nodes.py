"""Two nodes over HTTP: agents on different nodes message each other.

Each node is a bus plus a ``NetworkProtocol`` listening on 127.0.0.1 (``port=0``: a free
port; on two hosts give ``host="0.0.0.0"`` and a ``public_url``). Both sign their
node-to-node requests with one shared secret (at least 16 bytes; in production set
``$AOS_NETWORK_SECRET`` on every node instead of passing it). Each node imports the other's
agents from their agent cards (``add_peer``), then ``send_message`` finds the agent wherever
it is hosted.

Run: ``.venv/bin/python examples/two_nodes.py``
"""

from __future__ import annotations

import asyncio
import secrets

from AgentOperatingSystem.config.network import NetworkConfig
from AgentOperatingSystem.messaging import Message, MessageBus, MessageBusConfig, MessageType
from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol


async def main() -> None:
    secret = secrets.token_hex(16)  # 32 characters: every node of a deployment shares it
    config = NetworkConfig(host="127.0.0.1", port=0, auth_secret=secret)
    got_reply = asyncio.Event()

    async with (
        MessageBus(MessageBusConfig(broker_url="memory://")) as hq_bus,
        MessageBus(MessageBusConfig(broker_url="memory://")) as finance_bus,
        NetworkProtocol(config, hq_bus) as hq,
        NetworkProtocol(config, finance_bus) as finance,
    ):

        async def cfo(msg: Message) -> None:
            print(f"finance node, cfo_agent <- {msg.sender_id}: {msg.content}")
            answer = {"revenue": 4_200_000}
            await finance.send_message(
                "cfo_agent", msg.sender_id, answer, message_type=MessageType.RESPONSE
            )

        async def ceo(msg: Message) -> None:
            print(f"hq node, ceo_agent <- {msg.sender_id}: {msg.content}")
            got_reply.set()

        await finance_bus.subscribe("cfo_agent", [MessageType.TASK], cfo)
        await hq_bus.subscribe("ceo_agent", [MessageType.RESPONSE], ceo)
        await finance.register_agent("cfo_agent", capabilities=["finance"])
        await hq.register_agent("ceo_agent", capabilities=["strategy"])

        imported = await hq.add_peer(finance.url)
        print("hq imported:", [info.agent_id for info in imported])
        await finance.add_peer(hq.url)

        receipt = await hq.send_message(
            "ceo_agent", "cfo_agent", {"task": "Q2 report"}, message_type=MessageType.TASK
        )
        print("delivered to the other node:", receipt.recipient_id)
        await asyncio.wait_for(got_reply.wait(), 10)


if __name__ == "__main__":
    asyncio.run(main())
