"""A multi-agent walk-through on the embedded SQLite default.

An orchestrator hands a task to a CEO agent; the CEO queries the CFO agent and gets an answer;
the CEO announces an event that fans out to every subscriber; an analyst whose handler fails
ends in the dead-letter queue, is fixed and resubmitted, and the message is delivered.

Run it with ``make demo``, ``aos-messaging demo`` or
``python -m AgentOperatingSystem.messaging.demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..config.messagebus import MessageBusConfig
from ..storage.manager import StorageManager
from .conversation_system import ConversationSystem
from .core.bus import MessageBus
from .types import Message, MessagePriority, MessageType

_T0 = time.monotonic()
_AGENTS = ("ceo_agent", "cfo_agent", "analyst_1")


def say(who: str, text: str) -> None:
    """Print one line of the story with the elapsed time and the speaking agent."""
    print(f"[{time.monotonic() - _T0:6.3f}s] {who:>13} | {text}", flush=True)


def _config(data_dir: Path) -> MessageBusConfig:
    return MessageBusConfig(
        enable_persistence=True,
        data_dir=str(data_dir),
        max_queue_size=1000,
        message_ttl_seconds=3600,
        poll_interval=0.05,
        default_retry_policy={"max_attempts": 3, "initial_delay": 0.1, "backoff_multiplier": 2},
    )


class _Scenario:
    """The agents of the story (their handlers) and its scenes, on one bus."""

    def __init__(self, bus: MessageBus, storage: StorageManager) -> None:
        self.bus = bus
        self.conversations = ConversationSystem(storage, bus)
        self.done = asyncio.Event()
        self.analyst_fixed = False

    # -- the agents ---------------------------------------------------------------------

    async def cfo(self, message: Message) -> dict[str, Any] | None:
        """Answers the CEO's query; hears the announced event."""
        if "conversation_id" in message.metadata:
            say(
                "cfo_agent",
                f"conversation turn from {message.sender_id}: {message.content['text']!r}",
            )
            return None
        if message.message_type is MessageType.QUERY:
            say("cfo_agent", f"asked {message.content['query']!r} by {message.sender_id}")
            return {"revenue": 4_200_000, "currency": "USD", "quarter": "Q2"}
        say("cfo_agent", f"heard event {message.content['event']!r}")
        return None

    async def ceo(self, message: Message) -> None:
        """Takes the task: a conversation with the CFO, then an announcement to everyone."""
        if "conversation_id" in message.metadata:
            say("ceo_agent", f"conversation turn from {message.sender_id}: {message.content}")
            return
        say(
            "ceo_agent",
            f"got task {message.content['task']!r} (priority {message.priority.name})",
        )
        answer = await self._ask_cfo()
        result = await self.bus.publish(
            message_type=MessageType.EVENT,
            sender_id="ceo_agent",
            content={"event": "quarterly_report_ready", "revenue": answer.content["revenue"]},
        )
        say("ceo_agent", f"announced quarterly_report_ready to {sorted(result.recipients)}")

    async def _ask_cfo(self) -> Message:
        """The CEO's conversation with the CFO: a question, the answer by request/response."""
        conversations = self.conversations
        conversation_id = await conversations.start_conversation(
            participants=["ceo_agent", "cfo_agent"],
            topic="quarterly_planning",
            metadata={"quarter": "Q2", "year": 2025},
        )
        await conversations.add_message(
            conversation_id,
            "ceo_agent",
            "What's our revenue projection for Q2?",
            message_type=MessageType.QUERY,
        )
        answer = await self.bus.request(
            sender_id="ceo_agent",
            recipient_id="cfo_agent",
            content={"query": "What's the Q2 revenue?"},
            timeout=10,
        )
        say("ceo_agent", f"CFO answered: {answer.content}")
        await conversations.add_message(
            conversation_id,
            "cfo_agent",
            {"text": "Q2 revenue", **answer.content},
            message_type=MessageType.RESPONSE,
        )
        context = await conversations.get_context(conversation_id, max_messages=20)
        say("ceo_agent", f"conversation {context['topic']!r} has {context['message_count']} turns")
        await conversations.end_conversation(conversation_id)
        return answer

    async def analyst(self, message: Message) -> None:
        """Fails until the warehouse is back, then processes the resubmitted event."""
        if not self.analyst_fixed:
            say("analyst_1", "handler failed: ConnectionError('warehouse unavailable')")
            raise ConnectionError("warehouse unavailable")
        say("analyst_1", f"processed event {message.content['event']!r} after resubmission")
        self.done.set()

    # -- the scenes ---------------------------------------------------------------------

    async def hand_off_task(self) -> None:
        """Scene 1: the agents subscribe; the orchestrator hands the task to the CEO."""
        bus = self.bus
        await bus.subscribe("cfo_agent", [MessageType.QUERY, MessageType.EVENT], self.cfo)
        await bus.subscribe("ceo_agent", [MessageType.TASK, MessageType.RESPONSE], self.ceo)
        await bus.subscribe("analyst_1", [MessageType.EVENT], self.analyst)
        say("orchestrator", "hands the quarterly analysis to ceo_agent")
        await bus.publish(
            Message(
                message_type=MessageType.TASK,
                sender_id="orchestrator",
                recipient_id="ceo_agent",
                content={
                    "task": "analyze_quarterly_report",
                    "data": {"quarter": "Q2", "year": 2025},
                },
                priority=MessagePriority.HIGH,
                metadata={"correlation_id": "task_123"},
            )
        )

    async def inspect_dead_letters(self) -> list[Message]:
        """Scene 2: wait for the analyst's message in the dead-letter queue and show it."""
        bus = self.bus
        for _ in range(400):
            if await bus.dead_letter_depth("analyst_1"):
                break
            await asyncio.sleep(0.025)
        dead = await bus.get_dead_letter_messages("analyst_1")
        for message in dead:
            meta = message.metadata
            say(
                "orchestrator",
                f"dead letter {message.message_id[:8]}: reason={meta['aos.dead_letter.reason']}"
                f" attempts={meta['aos.dead_letter.attempts']}"
                f" error={meta['aos.dead_letter.error']!r}",
            )
        return dead

    async def resubmit(self, dead: list[Message]) -> bool:
        """Scene 3: fix the analyst, resubmit, and wait for the delivery."""
        self.analyst_fixed = True
        say("orchestrator", "warehouse is back; resubmitting the dead letter")
        for message in dead:
            await self.bus.resubmit(message)
        try:
            await asyncio.wait_for(self.done.wait(), 15)
        except TimeoutError:
            say("orchestrator", "the resubmitted message was not delivered in time")
            return False
        return True

    async def all_clear(self) -> bool:
        """Scene 4: every queue and dead-letter queue is empty."""
        bus = self.bus
        depths = {agent: await bus.queue_depth(agent) for agent in _AGENTS}
        dead_now = {agent: await bus.dead_letter_depth(agent) for agent in _AGENTS}
        say("bus", f"queue depths {depths}; dead letters {dead_now}")
        return not any(depths.values()) and not any(dead_now.values())


async def _play(scenario: _Scenario) -> bool:
    """The scenes in order; false as soon as one goes wrong."""
    await scenario.hand_off_task()
    dead = await scenario.inspect_dead_letters()
    if not dead:
        say("orchestrator", "expected a dead letter for analyst_1 and found none")
        return False
    return await scenario.resubmit(dead) and await scenario.all_clear()


async def run(data_dir: Path) -> int:
    """Play the scenario on a SQLite bus in ``data_dir``; return a process exit code."""
    await asyncio.to_thread(shutil.rmtree, data_dir, True)
    config = _config(data_dir)
    storage = StorageManager(f"sqlite:///{(data_dir / 'store.db').resolve()}")
    say("bus", f"engine: {config.resolved_broker_url()}")
    async with MessageBus(config) as bus:
        if not await _play(_Scenario(bus, storage)):
            return 1
    await storage.aclose()
    say("bus", "stopped cleanly; everything above is in " + str(data_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m AgentOperatingSystem.messaging.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=".aos/demo", help="where the SQLite files go")
    args = parser.parse_args(argv)
    return asyncio.run(run(Path(args.data_dir)))


if __name__ == "__main__":
    sys.exit(main())
