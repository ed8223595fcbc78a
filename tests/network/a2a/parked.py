"""The two sides of a parked task, each run as its own process (for
``test_a2a_processes.py``).

``python -m tests.network.a2a.parked node PORT DIR``: a node on 127.0.0.1:PORT whose bus and
store are SQLite files in DIR, hosting ``analyst``, which asks for the quarter
(``InputRequired``) before it answers; prints ``ready`` and serves until SIGTERM.

``python -m tests.network.a2a.parked ask URL TEXT [TASK_ID]``: an a2a-sdk client that sends
TEXT (to the task TASK_ID when given) and prints the task as JSON: ``{"id", "state",
"text"}`` (the status message's text).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import Message as A2AMessage
from a2a.types.a2a_pb2 import Part, Role, SendMessageRequest, TaskState

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.config.network import NetworkConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.core.turns import InputRequired
from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol
from AgentOperatingSystem.messaging.types import Message, MessageType
from AgentOperatingSystem.storage.manager import StorageManager


async def node(port: int, directory: str) -> None:
    """Serve until SIGTERM."""
    bus = MessageBus(MessageBusConfig(broker_url=f"sqlite:///{directory}/bus.db"))
    storage = StorageManager(f"sqlite:///{directory}/store.db")
    await bus.start()
    config = NetworkConfig(host="127.0.0.1", port=port, allow_unsigned=True)
    protocol = NetworkProtocol(config, bus, storage=storage)

    async def analyst(msg: Message) -> dict[str, Any]:
        text = msg.content["text"]
        if not text.startswith("Q"):
            return InputRequired("Which quarter?")
        return {"text": f"revenue for {text}: 42"}

    await bus.subscribe("analyst", [MessageType.QUERY], analyst)
    await protocol.start()
    await protocol.register_agent("analyst")
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await protocol.stop()
    await bus.stop()
    await storage.close()


async def ask(url: str, text: str, task_id: str) -> None:
    """Send one message; print the task."""
    async with httpx.AsyncClient(timeout=30) as hc:
        client = await ClientFactory(
            ClientConfig(streaming=False, httpx_client=hc)
        ).create_from_url(url)
        request = SendMessageRequest(
            message=A2AMessage(
                role=Role.ROLE_USER,
                message_id=f"m-{text}",
                task_id=task_id,
                parts=[Part(text=text)],
            )
        )
        (event,) = [e async for e in client.send_message(request)]
        task = event.task
        status_text = task.status.message.parts[0].text if task.status.message.parts else ""
        out = {"id": task.id, "state": TaskState.Name(task.status.state), "text": status_text}
        print(json.dumps(out), flush=True)
        await client.close()


def main() -> None:
    """The command line."""
    if sys.argv[1] == "node":
        asyncio.run(node(int(sys.argv[2]), sys.argv[3]))
    else:
        asyncio.run(ask(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else ""))


if __name__ == "__main__":
    main()
