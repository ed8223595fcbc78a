"""NATS JetStream: two buses on one NATS namespace, as two processes or two hosts would be.

Give it a server (``--url nats://host:4222`` or ``$AOS_NATS_URL``), or let it start its own
``nats-server -js`` on a free port of 127.0.0.1 with a temporary store (stopped at the end,
by its process id). ``--namespace`` keeps this example's streams and buckets apart from
everything else on the server (default ``examples``).

The CFO's bus subscribes; the CEO's bus (another connection) asks it a question and sends
it an event that fans out to every subscriber of its type.

Run: ``.venv/bin/python examples/nats_jetstream.py`` (needs ``nats-server`` on PATH and the
``nats`` extra: ``pip install -e '.[nats]'``)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

from AgentOperatingSystem.messaging import Message, MessageBus, MessageBusConfig, MessageType


def start_nats_server(store: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``nats-server -js`` on a free port of 127.0.0.1; return it and its URL."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nats-server did not start")


async def run(url: str, namespace: str) -> None:
    engine = f"{url}?namespace={namespace}"
    heard = asyncio.Event()

    async def cfo(msg: Message) -> dict[str, Any] | None:
        if msg.message_type is MessageType.EVENT:
            print(f"cfo_agent heard the event: {msg.content}")
            heard.set()
            return None
        return {"revenue": 4_200_000}

    async with (
        MessageBus(MessageBusConfig(broker_url=engine)) as cfo_bus,
        MessageBus(MessageBusConfig(broker_url=engine)) as ceo_bus,
    ):
        await cfo_bus.subscribe("cfo_agent", [MessageType.QUERY, MessageType.EVENT], cfo)
        answer = await ceo_bus.request(
            sender_id="ceo_agent", recipient_id="cfo_agent", content={"q": "Q2?"}, timeout=30
        )
        print("ceo_agent got:", answer.content)
        await ceo_bus.publish(message_type=MessageType.EVENT, content={"quarter": "Q2 closed"})
        await asyncio.wait_for(heard.wait(), 30)
    print("namespace:", namespace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("AOS_NATS_URL"), help="NATS server URL")
    parser.add_argument("--namespace", default="examples", help="JetStream namespace")
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.namespace))
        return
    with tempfile.TemporaryDirectory() as store:
        server, url = start_nats_server(store)
        try:
            print("started nats-server -js for this example")
            asyncio.run(run(url, args.namespace))
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
