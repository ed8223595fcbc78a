"""A node hosting one echo agent, for the A2A conformance kit (``make tck``).

``python -m tests.network.a2a.echo_node PORT [--answer-after SECONDS]``: serves on
127.0.0.1:PORT and prints its URL. The agent ``echo`` answers with the text it got; with
``--answer-after`` it answers that many seconds later, so that a blocking ``SendMessage``
(``a2a_request_timeout`` 0.2 s) returns the task still working, as the kit's reference agent
leaves its tasks; the late answer then completes the task. ``--token`` requires a bearer
token (the kit's ``A2A_AUTH_TYPE=bearer A2A_AUTH_TOKEN=...``), ``--push`` turns push
notifications on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.config.network import NetworkConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol
from AgentOperatingSystem.messaging.types import Message, MessageType


async def serve(port: int, answer_after: float, token: str | None, push: bool) -> None:
    """Serve until SIGTERM or SIGINT."""
    bus = MessageBus(MessageBusConfig(broker_url="memory://"))
    await bus.start()
    config = NetworkConfig(
        host="127.0.0.1",
        port=port,
        allow_unsigned=True,
        a2a_request_timeout=0.2 if answer_after > 0 else 5.0,
        a2a_auth_token=token,
        a2a_push_notifications=push,
    )
    node = NetworkProtocol(config, bus)

    async def echo(msg: Message) -> dict[str, Any]:
        if answer_after > 0:
            await asyncio.sleep(answer_after)
        return {"text": f"echo: {msg.content.get('text', '')}"}

    await bus.subscribe("echo", [MessageType.QUERY], echo, max_concurrency=64)
    await node.start()
    await node.register_agent("echo", capabilities=["echo"], metadata={"name": "Echo"})
    print(node.url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()
    with contextlib.suppress(Exception):
        await bus.stop(timeout=1.0)  # the slow echoes in flight are dropped


def main() -> None:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--answer-after", type=float, default=30.0)
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument("--push", action="store_true", help="send push notifications")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.answer_after, args.token, args.push))


if __name__ == "__main__":
    main()
