"""The spec's section 3.5 examples as written, for the tests that run them on a backend:
:mod:`.test_servicebus` (our engines) and :mod:`.test_servicebus_azure` (the fake Azure).

* :func:`start_service_bus_manager_example` provisions the topic and subscription the first
  example ("Service Bus Manager") assumes exist, as on Azure, and starts the example in a
  task: it sends :data:`SPEC_EVENT`, then receives until the manager closes.
* :func:`topic_and_subscription_management` is the second example, as written.
"""

from __future__ import annotations

import asyncio
from typing import Any

from AgentOperatingSystem.messaging.servicebus_manager import ServiceBusManager
from AgentOperatingSystem.messaging.types import Message

__all__ = ["SPEC_EVENT", "start_service_bus_manager_example", "topic_and_subscription_management"]

#: The message the first example sends to ``agent_events``.
SPEC_EVENT: dict[str, Any] = {
    "event_type": "task_completed",
    "agent_id": "ceo_agent",
    "task_id": "task_001",
}


async def start_service_bus_manager_example(
    service_bus: ServiceBusManager,
) -> tuple[list[Message], asyncio.Task[None]]:
    """Provision ``agent_events``/``orchestrator_subscription`` and start the example in a
    task; return the list its ``process_event`` appends to, and the task (which ends when
    the manager closes: the caller awaits it)."""
    processed: list[Message] = []

    async def process_event(message: Message) -> None:
        processed.append(message)

    await service_bus.create_topic(topic_name="agent_events")
    await service_bus.create_subscription(
        topic_name="agent_events", subscription_name="orchestrator_subscription"
    )

    async def service_bus_manager_example() -> None:
        # ---- spec 3.5 "Service Bus Manager", as written ----
        # Send message to topic
        await service_bus.send_to_topic(
            topic_name="agent_events",
            message={
                "event_type": "task_completed",
                "agent_id": "ceo_agent",
                "task_id": "task_001",
            },
        )

        # Receive messages from subscription
        async for message in service_bus.receive_from_subscription(
            topic_name="agent_events", subscription_name="orchestrator_subscription"
        ):
            await process_event(message)
            await service_bus.complete_message(message)

    return processed, asyncio.create_task(service_bus_manager_example())


async def topic_and_subscription_management(service_bus: ServiceBusManager) -> None:
    """The second example: ``agent_tasks`` and its filtered ``ceo_agent_tasks``."""
    # ---- spec 3.5 "Topic and Subscription Management", as written ----
    # Create topic
    await service_bus.create_topic(
        topic_name="agent_tasks", max_size_in_mb=1024, default_message_ttl_seconds=3600
    )

    # Create subscription
    await service_bus.create_subscription(
        topic_name="agent_tasks",
        subscription_name="ceo_agent_tasks",
        filter_rule="agent_id = 'ceo_agent'",
    )
