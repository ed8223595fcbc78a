"""Foreign producers on NATS (issue 16): a plain CloudEvent published with nats-py to an
agent's queue subject, without the AOS headers, reaches the agent's handler as a Message
and is not dead-lettered."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import nats
import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.brokers.nats import create_nats_broker
from AgentOperatingSystem.messaging.brokers.nats.subjects import queue_token
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import SystemClock
from AgentOperatingSystem.messaging.types import Message, MessageType

pytestmark = pytest.mark.nats

AGENT = "ceo_agent"


def _split(url: str) -> tuple[str, str]:
    """The server URL and namespace of an engine URL ``nats://...?namespace=<ns>``."""
    parts = urlsplit(url)
    namespace = parse_qs(parts.query)["namespace"][0]
    return f"{parts.scheme}://{parts.netloc}", namespace


async def _publish_foreign(
    server: str, subject: str, event: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """Publish ``event`` as another team would: plain nats-py JetStream, no AOS headers."""
    nc = await nats.connect(server)
    try:
        js = nc.jetstream()
        await js.publish(subject, json.dumps(event).encode(), headers=headers)
    finally:
        await nc.close()


async def _deliver(
    url: str, event: dict[str, Any], headers: dict[str, str] | None = None
) -> Message:
    """Subscribe ``AGENT`` on a bus, publish ``event`` from a foreign client to its queue
    subject (priority 2), and return what the handler got; nothing may be dead-lettered."""
    server, namespace = _split(url)
    got: asyncio.Queue[Message] = asyncio.Queue()

    async def handle(msg: Message) -> None:
        await got.put(msg)

    config = MessageBusConfig(broker_url=url, storage_url="memory://", poll_interval=0.05)
    async with MessageBus(config) as bus:
        await bus.subscribe(AGENT, None, handle)
        subject = f"{namespace}.q.{queue_token(AGENT)}.2"
        await _publish_foreign(server, subject, event, headers)
        msg = await asyncio.wait_for(got.get(), 10)
        await asyncio.sleep(0.2)  # let the ack settle before looking for dead letters
        assert await bus.dead_letter_depth(AGENT) == 0
        assert await bus.get_dead_letter_messages(AGENT) == []
        assert got.empty()  # delivered once
    return msg


async def test_a_foreign_cloudevent_on_an_agent_queue_reaches_the_handler_as_an_event(
    nats_engine_url: str,
) -> None:
    event = {
        "specversion": "1.0",
        "id": "order-1",
        "source": "https://shop.example.com/orders",
        "type": "com.example.order.created",
        "datacontenttype": "application/json",
        "data": {"order": 17, "total": 99.5},
    }
    msg = await _deliver(nats_engine_url, event)
    assert msg.message_type is MessageType.EVENT
    assert msg.content["type"] == "com.example.order.created"
    assert msg.content["data"] == {"order": 17, "total": 99.5}
    assert msg.recipient_id == AGENT
    assert msg.message_id  # an engine id, stable for this stored message


async def test_a_foreign_aos_task_event_becomes_a_task_and_keeps_its_nats_msg_id(
    nats_engine_url: str,
) -> None:
    event = {
        "specversion": "1.0",
        "id": "job-7",
        "source": "urn:team:billing",
        "type": "aos.task",
        "data": {"do": "invoice"},
    }
    msg = await _deliver(nats_engine_url, event, headers={"Nats-Msg-Id": "billing-job-7"})
    assert msg.message_type is MessageType.TASK
    assert msg.content == {"do": "invoice"}
    assert msg.message_id == "billing-job-7"


async def test_a_foreign_event_whose_handler_fails_is_dead_lettered_under_its_engine_id(
    nats_engine_url: str,
) -> None:
    server, namespace = _split(nats_engine_url)
    seen: list[str] = []

    async def fail(msg: Message) -> None:
        seen.append(msg.message_id)
        raise RuntimeError("cannot handle it")

    config = MessageBusConfig(
        broker_url=nats_engine_url,
        storage_url="memory://",
        poll_interval=0.05,
        default_retry_policy={"max_attempts": 1},
    )
    event = {"specversion": "1.0", "id": "e1", "source": "urn:x", "type": "com.example.ping"}
    async with MessageBus(config) as bus:
        await bus.subscribe(AGENT, None, fail)
        await _publish_foreign(server, f"{namespace}.q.{queue_token(AGENT)}.2", event)
        for _ in range(200):
            if await bus.dead_letter_depth(AGENT):
                break
            await asyncio.sleep(0.05)
        dead = await bus.get_dead_letter_messages(AGENT)
    assert len(seen) == 1 and seen[0].startswith(f"{namespace}_Q:")  # stream:sequence
    engine = await create_nats_broker(server, clock=SystemClock(), namespace=namespace)
    try:
        letters = await engine.dead_letters(AGENT)
    finally:
        await engine.close()
    assert [d.message_id for d in letters] == seen  # the engine filed it under its id
    assert len(dead) == 1
    assert dead[0].message_type is MessageType.EVENT
    assert dead[0].content == {"type": "com.example.ping"}
    assert dead[0].metadata["aos.dead_letter.reason"] == "max_attempts"
