"""Network figures, each beside a baseline measured in the same run.

* ``NetworkProtocol.send_message`` throughput through the connection pool, 16 senders at once,
  to an agent on another node (HMAC signing and verification, the CloudEvents codec, the
  registry, the circuit breaker, the receiving bus; with the default ``batch_after=4`` the
  pool coalesces the sends that wait into CloudEvents batches) vs a raw aiohttp client
  POSTing the same envelope bytes, one request each, to a raw aiohttp handler that reads them
  and answers 202 (target: >= 60%);
* the p50 latency of one send, one at a time, vs the same raw POST (target: <= 1.5x).

The sending ends run in this process, each receiving end (the raw handler, the node) in a
process of its own (``benchmarks/http_peer.py``), all on 127.0.0.1, as nodes on two hosts
would; runs alternate (raw, ours, raw, ours) and each side keeps its best run, so a noisy
neighbour hurts both alike.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.config.network import NetworkConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.codec.envelope import encode
from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol
from AgentOperatingSystem.messaging.types import Message, MessageType
from AgentOperatingSystem.storage.manager import StorageManager
from benchmarks.common import Child, p50, result

SECRET = "benchmark-secret-0123456789abcdef"
CONCURRENCY = 16
PAYLOAD = {"task": "quarterly_report", "quarter": "Q3", "notes": "x" * 200}


def _message(i: int) -> Message:
    return Message(
        message_type=MessageType.TASK,
        sender_id="bench",
        recipient_id="sink",
        content={**PAYLOAD, "i": i},
    )


async def _raw_throughput(session: aiohttp.ClientSession, url: str, bodies: list[bytes]) -> float:
    it = iter(bodies)

    async def worker() -> None:
        for body in it:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/cloudevents+json"}
            ) as resp:
                await resp.read()
                assert resp.status == 202

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return len(bodies) / (time.perf_counter() - start)


async def _raw_latency(session: aiohttp.ClientSession, url: str, bodies: list[bytes]) -> float:
    samples: list[float] = []
    for body in bodies:
        start = time.perf_counter()
        async with session.post(
            url, data=body, headers={"Content-Type": "application/cloudevents+json"}
        ) as resp:
            await resp.read()
        samples.append(time.perf_counter() - start)
    return p50(samples) * 1000


async def _node_throughput(sender: NetworkProtocol, msgs: list[Message]) -> float:
    it = iter(msgs)

    async def worker() -> None:
        for m in it:
            await sender.send_message("bench", "sink", m)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return len(msgs) / (time.perf_counter() - start)


async def _node_latency(sender: NetworkProtocol, msgs: list[Message]) -> float:
    samples: list[float] = []
    for m in msgs:
        start = time.perf_counter()
        await sender.send_message("bench", "sink", m)
        samples.append(time.perf_counter() - start)
    return p50(samples) * 1000


async def run(quick: bool) -> list[dict[str, Any]]:
    """Throughput and p50 latency of ``send_message`` vs raw aiohttp, same bytes."""
    n = 2000 if quick else 10000
    n_latency = 300 if quick else 2000
    rounds = 2
    storage = StorageManager("memory://")
    config = NetworkConfig(
        host="127.0.0.1",
        port=0,
        auth_secret=SECRET,
        max_connections=CONCURRENCY,
        registry_cache_seconds=60.0,
    )
    bus_cfg = MessageBusConfig(broker_url="memory://", max_queue_size=10_000_000)
    raw_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))
    best: dict[str, float] = {"raw_tp": 0.0, "node_tp": 0.0}
    lat: dict[str, float] = {"raw": float("inf"), "node": float("inf")}
    try:
        async with (
            Child("benchmarks.http_peer", "raw") as raw_peer,
            Child("benchmarks.http_peer", "node", SECRET) as node_peer,
        ):
            raw_url = raw_peer.line + "/ingest"
            async with MessageBus(bus_cfg) as bus_a:
                sender = NetworkProtocol(config, bus_a, storage=storage)
                async with sender:
                    await sender.register_agent("sink", node_peer.line, capabilities=["bench"])
                    warm = [_message(i) for i in range(200)]
                    await _node_throughput(sender, warm)
                    await _raw_throughput(raw_session, raw_url, [encode(m) for m in warm])
                    for _ in range(rounds):
                        msgs = [_message(i) for i in range(n)]
                        bodies = [encode(m) for m in msgs]  # the very bytes the node sends
                        best["raw_tp"] = max(
                            best["raw_tp"], await _raw_throughput(raw_session, raw_url, bodies)
                        )
                        best["node_tp"] = max(best["node_tp"], await _node_throughput(sender, msgs))
                        small = [_message(i) for i in range(n_latency)]
                        lat["raw"] = min(
                            lat["raw"],
                            await _raw_latency(raw_session, raw_url, [encode(m) for m in small]),
                        )
                        lat["node"] = min(lat["node"], await _node_latency(sender, small))
                    assert await bus_a.dead_letter_depth("_net.outbox.bench") == 0
    finally:
        await raw_session.close()
        await storage.close()
    return [
        result(
            "network.send_message_throughput",
            best["node_tp"],
            "msg/s",
            "raw aiohttp POST of the same envelope bytes",
            best["raw_tp"],
            higher_is_better=True,
            target=0.6,
        ),
        result(
            "network.send_message_p50_latency",
            lat["node"],
            "ms",
            "raw aiohttp POST of the same envelope bytes",
            lat["raw"],
            higher_is_better=False,
            target=1.5,
        ),
    ]


if __name__ == "__main__":  # pragma: no cover
    import json

    for row in asyncio.run(run(quick=True)):
        print(json.dumps(row))
