"""Request/response: an answer, an explicit reply, a timeout and a failed request.

* a handler's return value is the response to a QUERY;
* ``bus.reply(request, content)`` answers explicitly (here from a TASK handler);
* nobody consuming the recipient's queue: ``request()`` raises ``RequestTimeoutError``;
* a handler that keeps raising: after ``max_attempts`` the request is dead-lettered and
  ``request()`` raises ``RequestFailedError`` at once, with the reason.

Runs on ``memory://`` (one process). Run: ``.venv/bin/python examples/request_response.py``
"""

from __future__ import annotations

import asyncio
from typing import Any

from AgentOperatingSystem.messaging import (
    Message,
    MessageBus,
    MessageBusConfig,
    MessageType,
    RequestFailedError,
    RequestTimeoutError,
)


async def main() -> None:
    config = MessageBusConfig(broker_url="memory://", default_retry_policy={"max_attempts": 2})
    async with MessageBus(config) as bus:

        async def cfo(msg: Message) -> dict[str, Any]:
            return {"revenue": 4_200_000}

        async def planner(msg: Message) -> None:
            await bus.reply(msg, {"plan": f"three steps for {msg.content['goal']}"})

        async def broken(msg: Message) -> None:
            raise RuntimeError("the ledger is locked")

        await bus.subscribe("cfo_agent", [MessageType.QUERY], cfo)
        await bus.subscribe("planner", [MessageType.TASK], planner)
        await bus.subscribe("auditor", [MessageType.QUERY], broken)

        answer = await bus.request(recipient_id="cfo_agent", content={"q": "Q2?"}, timeout=5)
        print("answer:", answer.content, "| type:", answer.message_type.value)

        plan = await bus.request(
            recipient_id="planner",
            content={"goal": "Q3"},
            message_type=MessageType.TASK,
            timeout=5,
        )
        print("reply:", plan.content)

        try:
            await bus.request(recipient_id="nobody_home", content={}, timeout=0.2)
        except RequestTimeoutError:
            print("timeout: nobody answered nobody_home within 0.2 s")

        try:
            await bus.request(recipient_id="auditor", content={"q": "books?"}, timeout=30)
        except RequestFailedError as exc:
            print("failed:", exc.reason)
        (letter,) = await bus.get_dead_letter_messages("auditor")
        print("dead letter error:", letter.metadata["aos.dead_letter.error"])


if __name__ == "__main__":
    asyncio.run(main())
