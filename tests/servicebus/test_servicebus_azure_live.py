"""ServiceBusManager against a REAL Azure Service Bus namespace (Standard tier or above).

These are the only conditional tests of the suite: they are collected when
``AZURE_SERVICE_BUS_CONNECTION_STRING`` is set (a connection string with Manage rights) and
deselected otherwise (``tests/conftest.py``; marker ``azure_live``), so a run without Azure
reports them as deselected, never as skipped or passed. Every test works on topics named
``aos-live-<random>`` and deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import AsyncIterator

import pytest

from AgentOperatingSystem.messaging.errors import EntityExistsError, EntityNotFoundError
from AgentOperatingSystem.messaging.servicebus_manager import ServiceBusManager, servicebus_info
from AgentOperatingSystem.messaging.types import Message

CONNECTION_STRING = os.getenv("AZURE_SERVICE_BUS_CONNECTION_STRING")
pytestmark = pytest.mark.azure_live


@pytest.fixture
async def live() -> AsyncIterator[tuple[ServiceBusManager, str]]:
    manager = ServiceBusManager(connection_string=CONNECTION_STRING)
    prefix = f"aos-live-{uuid.uuid4().hex[:10]}"
    try:
        yield manager, prefix
    finally:
        for topic in await manager.list_topics():
            if topic.name.startswith(prefix):
                await manager.delete_topic(topic.name)
        await manager.close()


async def test_live_spec_3_5_examples(live: tuple[ServiceBusManager, str]) -> None:
    service_bus, prefix = live
    events, tasks = f"{prefix}-agent_events", f"{prefix}-agent_tasks"
    processed: list[Message] = []

    async def process_event(message: Message) -> None:
        processed.append(message)

    await service_bus.create_topic(topic_name=events)
    await service_bus.create_subscription(
        topic_name=events, subscription_name="orchestrator_subscription"
    )
    await service_bus.send_to_topic(
        topic_name=events,
        message={"event_type": "task_completed", "agent_id": "ceo_agent", "task_id": "task_001"},
    )
    async for message in service_bus.receive_from_subscription(
        topic_name=events, subscription_name="orchestrator_subscription", max_wait_time=15
    ):
        await process_event(message)
        await service_bus.complete_message(message)
        break
    assert [m.content["task_id"] for m in processed] == ["task_001"]

    await service_bus.create_topic(
        topic_name=tasks, max_size_in_mb=1024, default_message_ttl_seconds=3600
    )
    await service_bus.create_subscription(
        topic_name=tasks, subscription_name="ceo_agent_tasks", filter_rule="agent_id = 'ceo_agent'"
    )
    with pytest.raises(EntityExistsError):
        await service_bus.create_topic(topic_name=tasks)
    await service_bus.send_to_topic(topic_name=tasks, message={"agent_id": "cfo_agent", "n": 1})
    await service_bus.send_to_topic(topic_name=tasks, message={"agent_id": "ceo_agent", "n": 2})
    got = await service_bus.receive_messages(tasks, "ceo_agent_tasks", 10, max_wait_time=15)
    assert [m.content["n"] for m in got] == [2]
    for message in got:
        await service_bus.complete_message(message)
    assert await service_bus.receive_messages(tasks, "ceo_agent_tasks", 10, max_wait_time=3) == []


async def test_live_dead_letters_and_rules(live: tuple[ServiceBusManager, str]) -> None:
    service_bus, prefix = live
    topic = f"{prefix}-dlq"
    await service_bus.create_topic(topic)
    await service_bus.create_subscription(topic, "s", max_delivery_count=2)
    await service_bus.add_rule(topic, "s", "never", "1=0")
    assert sorted(r.name for r in await service_bus.list_rules(topic, "s")) == ["$Default", "never"]
    await service_bus.send_to_topic(topic, {"n": 1})
    [message] = await service_bus.receive_messages(topic, "s", max_wait_time=15)
    await service_bus.abandon_message(message)
    [message] = await service_bus.receive_messages(topic, "s", max_wait_time=15)
    assert servicebus_info(message)["delivery_count"] == 2
    await service_bus.dead_letter_message(message, reason="BadInput", error_description="test")
    for _ in range(10):
        dead = await service_bus.receive_dead_letters(topic, "s")
        if dead:
            break
        await asyncio.sleep(1)
    assert [m.metadata["aos.dead_letter.reason"] for m in dead] == ["BadInput"]
    await service_bus.resubmit_dead_letter(dead[0])
    [again] = await service_bus.receive_messages(topic, "s", max_wait_time=15)
    assert again.content == {"n": 1}
    await service_bus.complete_message(again)
    await service_bus.delete_topic(topic)
    with pytest.raises(EntityNotFoundError):
        await service_bus.get_topic(topic)
