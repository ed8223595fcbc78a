"""The receiving end of the network benchmark, in its own OS process.

``python -m benchmarks.http_peer raw`` serves a raw aiohttp handler that reads the body and
answers 202 (the baseline); ``python -m benchmarks.http_peer node <secret>`` serves a
:class:`NetworkProtocol` node hosting agent ``sink`` on an in-memory bus. Either prints its
base URL on one line once it serves, and stops when its standard input closes (or by PID).
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

ACCEPTED = b'{"accepted":true,"duplicate":false}'


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _raw() -> None:
    async def ingest(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, body=ACCEPTED, content_type="application/json")

    app = web.Application()
    app.router.add_post("/ingest", ingest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await _until_stdin_closes()
    await runner.cleanup()


async def _node(secret: str) -> None:
    from AgentOperatingSystem.config.messagebus import MessageBusConfig
    from AgentOperatingSystem.config.network import NetworkConfig
    from AgentOperatingSystem.messaging.bus import MessageBus
    from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol
    from AgentOperatingSystem.storage.manager import StorageManager

    storage = StorageManager("memory://")
    config = NetworkConfig(host="127.0.0.1", port=0, auth_secret=secret)
    bus_config = MessageBusConfig(broker_url="memory://", max_queue_size=10_000_000)
    async with MessageBus(bus_config) as bus, NetworkProtocol(config, bus, storage=storage) as node:
        await node.register_agent("sink", capabilities=["bench"])
        print(node.url, flush=True)
        await _until_stdin_closes()
    await storage.close()


def main() -> None:
    """Entry point: ``raw`` or ``node <secret>``."""
    if sys.argv[1] == "raw":
        asyncio.run(_raw())
    else:
        asyncio.run(_node(sys.argv[2]))


if __name__ == "__main__":
    main()
