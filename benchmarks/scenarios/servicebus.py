"""ServiceBusManager figures, each beside the bus's own path on the same engine in the same run.

* ``servicebus_sqlite_fanout10_throughput``: ``send_to_topic`` of N messages to a topic with
  10 subscriptions (each with a SQL filter rule that matches, so every message is evaluated
  against 10 parsed filters), then every subscription drained with
  ``receive_messages(max_message_count=100)`` + ``complete_message`` per message. The value is
  deliveries per second (10 x N / elapsed). Baseline: the bus's own path to 10 queues,
  ``MessageBus.publish`` of an EVENT fanned out to 10 bound agent queues, drained with
  ``get_messages(limit=100)`` + ``acknowledge`` per message, on a fresh SQLite file.
* ``servicebus_nats_fanout10_throughput``: the same on NATS JetStream, against a
  ``nats-server`` the scenario starts on free ports (``tests/support/nats_server.py``); left
  out when there is no ``nats-server`` binary.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.servicebus_manager import ServiceBusManager
from AgentOperatingSystem.messaging.types import MessageType
from benchmarks.common import result

SUBSCRIPTIONS = 10
BATCH = 100


def _body(i: int) -> dict[str, Any]:
    return {"kind": "bench", "n": i, "agent_id": f"agent_{i % 7}", "payload": "x" * 120}


async def _servicebus(url: str, n: int) -> float:
    async with ServiceBusManager(connection_string=url, poll_interval=0.05) as sb:
        await sb.create_topic("bench")
        subs = [f"s{i}" for i in range(SUBSCRIPTIONS)]
        for sub in subs:
            await sb.create_subscription("bench", sub, filter_rule="kind = 'bench' AND n >= 0")
        start = time.perf_counter()
        for i in range(n):
            await sb.send_to_topic("bench", _body(i))
        delivered = 0
        for sub in subs:
            while True:
                batch = await sb.receive_messages("bench", sub, BATCH, max_wait_time=0)
                if not batch:
                    break
                for message in batch:
                    await sb.complete_message(message)
                delivered += len(batch)
        elapsed = time.perf_counter() - start
    if delivered != n * SUBSCRIPTIONS:
        raise RuntimeError(f"service bus delivered {delivered}, expected {n * SUBSCRIPTIONS}")
    return delivered / elapsed


async def _bus(url: str, n: int) -> float:
    config = MessageBusConfig(
        broker_url=url, storage_url="memory://", poll_interval=0.05, max_queue_size=1_000_000
    )
    async with MessageBus(config) as bus:
        agents = [f"agent{i}" for i in range(SUBSCRIPTIONS)]
        for agent in agents:
            await bus.broker.bind(MessageType.EVENT.value, agent)
        start = time.perf_counter()
        for i in range(n):
            await bus.publish(message_type=MessageType.EVENT, sender_id="bench", content=_body(i))
        delivered = 0
        for agent in agents:
            while True:
                batch = await bus.get_messages(agent, BATCH)
                if not batch:
                    break
                for message in batch:
                    await bus.acknowledge(message.message_id, agent)
                delivered += len(batch)
        elapsed = time.perf_counter() - start
    if delivered != n * SUBSCRIPTIONS:
        raise RuntimeError(f"bus delivered {delivered}, expected {n * SUBSCRIPTIONS}")
    return delivered / elapsed


async def run(quick: bool) -> list[dict[str, Any]]:
    """Both figures (NATS only when a ``nats-server`` binary exists)."""
    rows: list[dict[str, Any]] = []
    n = 200 if quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        sb_rate = await _servicebus(f"sqlite:///{Path(tmp) / 'servicebus.db'}", n)
        bus_rate = await _bus(f"sqlite:///{Path(tmp) / 'bus.db'}", n)
    rows.append(
        result(
            "servicebus_sqlite_fanout10_throughput",
            sb_rate,
            "deliveries/s",
            "MessageBus publish -> get_messages/acknowledge, 10 queues, SQLite",
            bus_rate,
            higher_is_better=True,
        )
    )

    try:
        from tests.support.nats_server import NatsServer, nats_server_binary

        nats_server_binary()
    except (ImportError, RuntimeError):
        return rows
    n = 100 if quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(tmp, name="servicebus-bench").start()
        try:
            sb_url = f"{server.url}?namespace=sb{os.urandom(4).hex()}"
            bus_url = f"{server.url}?namespace=bus{os.urandom(4).hex()}"
            sb_rate = await _servicebus(sb_url, n)
            bus_rate = await _bus(bus_url, n)
        finally:
            server.stop()
    rows.append(
        result(
            "servicebus_nats_fanout10_throughput",
            sb_rate,
            "deliveries/s",
            "MessageBus publish -> get_messages/acknowledge, 10 queues, NATS JetStream",
            bus_rate,
            higher_is_better=True,
        )
    )
    return rows
