"""Quickstart: two agents talking on the embedded default engine (an SQLite file in ./.aos).

The CEO agent asks the CFO agent a question and waits for the answer, then hands it a task.
Both agents live in this process; the messages go through the durable SQLite queue, so a
second process on the same ``./.aos`` would see them too.

Run from the repository root::

    .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from AgentOperatingSystem.messaging import Message, MessageBus, MessageBusConfig, MessageType


async def main() -> None:
    config = MessageBusConfig()  # no broker_url: SQLite in $AOS_DATA_DIR, else ./.aos
    print("engine: SQLite file", Path(config.data_dir, "messages.db"))
    task_done = asyncio.Event()

    async def cfo(msg: Message) -> dict[str, Any] | None:
        if msg.message_type is MessageType.QUERY:
            print(f"cfo_agent <- {msg.sender_id}: {msg.content['query']}")
            return {"revenue": 4_200_000, "currency": "EUR"}  # the return value answers
        print(f"cfo_agent <- {msg.sender_id}: task {msg.content['task']!r}")
        task_done.set()
        return None

    async with MessageBus(config) as bus:
        await bus.subscribe("cfo_agent", [MessageType.QUERY, MessageType.TASK], cfo)

        answer = await bus.request(
            sender_id="ceo_agent",
            recipient_id="cfo_agent",
            content={"query": "What was our Q2 revenue?"},
            timeout=30,
        )
        print(f"ceo_agent <- cfo_agent: {answer.content}")

        await bus.publish(
            message_type=MessageType.TASK,
            sender_id="ceo_agent",
            recipient_id="cfo_agent",
            content={"task": "prepare the board deck"},
        )
        await asyncio.wait_for(task_done.wait(), 30)


if __name__ == "__main__":
    asyncio.run(main())
