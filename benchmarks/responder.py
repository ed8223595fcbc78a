"""A responder in its own OS process, for the request/reply benchmarks.

``python -m benchmarks.responder raw <nats url> <subject>`` answers core NATS requests with
raw nats-py; ``python -m benchmarks.responder bus <bus url> <agent>`` subscribes ``agent`` on
a :class:`MessageBus` and answers its QUERY messages. Either way the answer is
``{"answer": content["q"]}``; the child prints ``ready`` once it serves and stops when its
standard input closes (or by PID).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def _raw(url: str, subject: str) -> None:
    import nats

    nc = await nats.connect(url)

    async def respond(msg: Any) -> None:
        await msg.respond(json.dumps({"answer": json.loads(msg.data)["q"]}).encode())

    await nc.subscribe(subject, cb=respond)
    await nc.flush()
    print("ready", flush=True)
    await _until_stdin_closes()
    await nc.close()


async def _bus(url: str, agent: str) -> None:
    from AgentOperatingSystem.config.messagebus import MessageBusConfig
    from AgentOperatingSystem.messaging.bus import MessageBus
    from AgentOperatingSystem.messaging.types import Message, MessageType

    async def answer(m: Message) -> dict[str, Any]:
        return {"answer": m.content["q"]}

    async with MessageBus(MessageBusConfig(broker_url=url, storage_url="memory://")) as bus:
        await bus.subscribe(agent, [MessageType.QUERY], answer)
        print("ready", flush=True)
        await _until_stdin_closes()


def main() -> None:
    """Entry point: ``raw|bus <url> <subject|agent>``."""
    kind, url, name = sys.argv[1:4]
    asyncio.run(_raw(url, name) if kind == "raw" else _bus(url, name))


if __name__ == "__main__":
    main()
