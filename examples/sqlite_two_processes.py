"""Two processes on one SQLite file: a worker process answers the requests of this one.

The parent starts ``python sqlite_two_processes.py --worker URL`` as a child process; both
open a bus on the same file, ``sqlite:///<tmp>/shared.db?synchronous=normal`` (``normal``:
a committed message survives a crash of the process, ``full``, the default, also a power
loss). The worker says ``ready`` on its stdout once it consumes; the parent then asks it
three questions and tells it to stop with a COMMAND. No server runs anywhere.

Run: ``.venv/bin/python examples/sqlite_two_processes.py``
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from AgentOperatingSystem.messaging import Message, MessageBus, MessageBusConfig, MessageType


async def worker(url: str) -> None:
    """The child process: answer QUERYs with this process's id until a ``stop`` COMMAND."""
    stop = asyncio.Event()

    async def answer(msg: Message) -> dict[str, Any] | None:
        if msg.message_type is MessageType.COMMAND:
            stop.set()
            return None
        return {"square": msg.content["n"] ** 2, "pid": os.getpid()}

    async with MessageBus(MessageBusConfig(broker_url=url, poll_interval=0.05)) as bus:
        await bus.subscribe("worker", [MessageType.QUERY, MessageType.COMMAND], answer)
        print("ready", flush=True)
        await stop.wait()


async def parent() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp, 'shared.db')}?synchronous=normal"
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", url, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            print("worker process:", line.decode().strip())
            async with MessageBus(MessageBusConfig(broker_url=url, poll_interval=0.05)) as bus:
                for n in (2, 3, 4):
                    reply = await bus.request(recipient_id="worker", content={"n": n}, timeout=30)
                    elsewhere = reply.content["pid"] != os.getpid()
                    square = reply.content["square"]
                    print(f"{n}^2 = {square} (answered by the other process: {elsewhere})")
                await bus.send_command("worker", "stop", {})
            print("worker exited with", await asyncio.wait_for(child.wait(), 30))
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2]))
    else:
        asyncio.run(parent())
