"""ConversationSystem: spec section 3.3, history, context, replay, errors, processes, bus."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

# MessageBusConfig lives in AgentOperatingSystem.config.messagebus; it is imported through the
# package re-export so this file does not depend on which of the two is imported first.
from AgentOperatingSystem.messaging import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
from AgentOperatingSystem.messaging.errors import (
    BrokerClosedError,
    ConversationClosedError,
    ConversationError,
    ConversationNotFoundError,
    InvalidMessageError,
    NotAParticipantError,
    PermissionDeniedError,
    QueueFullError,
)
from AgentOperatingSystem.messaging.types import Message, MessagePriority, MessageType
from AgentOperatingSystem.storage.manager import StorageManager
from tests.support.messages import drain

START = 1_750_000_000.0


@pytest.fixture
async def storage_manager(each_engine_url: str) -> AsyncIterator[StorageManager]:
    manager = StorageManager(each_engine_url, clock=ManualClock(START))
    try:
        yield manager
    finally:
        await manager.close()


@pytest.fixture
def clock(storage_manager: StorageManager) -> ManualClock:
    assert isinstance(storage_manager.clock, ManualClock)
    return storage_manager.clock


@pytest.fixture
def conversations(storage_manager: StorageManager) -> ConversationSystem:
    return ConversationSystem(storage_manager)


async def _with_turns(conversations: ConversationSystem, n: int) -> str:
    cid = await conversations.start_conversation(["a", "b"], "t")
    for i in range(n):
        await conversations.add_message(cid, "a" if i % 2 == 0 else "b", f"m{i}")
    return cid


# -- the spec's examples ---------------------------------------------------------------


async def test_spec_section_3_3_as_written(storage_manager: StorageManager) -> None:
    conversation_system = ConversationSystem(storage_manager)

    # Start a new conversation
    conversation_id = await conversation_system.start_conversation(
        participants=["ceo_agent", "cfo_agent"],
        topic="quarterly_planning",
        metadata={"quarter": "Q2", "year": 2025},
    )

    # Add message to conversation
    await conversation_system.add_message(
        conversation_id=conversation_id,
        sender_id="ceo_agent",
        content="What's our revenue projection for Q2?",
        message_type=MessageType.QUERY,
    )

    # Get conversation history
    history = await conversation_system.get_conversation_history(conversation_id)

    # Get conversation context for AI models
    context = await conversation_system.get_context(
        conversation_id=conversation_id, max_messages=20
    )

    # End conversation
    await conversation_system.end_conversation(conversation_id)

    assert isinstance(conversation_id, str) and conversation_id
    assert len(history) == 1
    turn = history[0]
    assert turn["sender_id"] == "ceo_agent"
    assert turn["content"] == "What's our revenue projection for Q2?"
    assert turn["message_type"] == "query"
    assert turn["sequence"] == 1
    assert turn["conversation_id"] == conversation_id
    assert datetime.fromisoformat(turn["timestamp"]).timestamp() == START

    # Context includes: recent messages, participants, topic and metadata, state
    assert context["messages"] == history
    assert context["participants"] == ["ceo_agent", "cfo_agent"]
    assert context["topic"] == "quarterly_planning"
    assert context["metadata"] == {"quarter": "Q2", "year": 2025}
    assert context["state"] == "active"
    assert context["message_count"] == 1
    assert context["chat"] == [
        {"role": "user", "name": "ceo_agent", "content": "What's our revenue projection for Q2?"}
    ]

    ended = await conversation_system.get_conversation(conversation_id)
    assert ended["state"] == "ended"
    assert ended["ended_at"] is not None


# -- start / end / list ----------------------------------------------------------------


async def test_start_records_everything(
    conversations: ConversationSystem, clock: ManualClock
) -> None:
    cid = await conversations.start_conversation(
        ["a", "b", "a", "c", "b"], "topic", {"k": [1]}, conversation_id="conv-1"
    )
    assert cid == "conv-1"
    info = await conversations.get_conversation(cid)
    assert info == {
        "conversation_id": "conv-1",
        "topic": "topic",
        "participants": ["a", "b", "c"],
        "metadata": {"k": [1]},
        "state": "active",
        "started_at": datetime.fromtimestamp(START, UTC).isoformat(),
        "ended_at": None,
        "summary": None,
        "message_count": 0,
    }
    assert datetime.fromisoformat(info["started_at"]).timestamp() == START
    assert datetime.fromisoformat(info["started_at"]).utcoffset() is not None
    with pytest.raises(ConversationError, match="already exists"):
        await conversations.start_conversation(["x"], "again", conversation_id="conv-1")


async def test_end_with_summary_and_twice(
    conversations: ConversationSystem, clock: ManualClock
) -> None:
    cid = await _with_turns(conversations, 2)
    clock.advance(90)
    final = await conversations.end_conversation(cid, summary="agreed on Q2")
    assert final["state"] == "ended"
    assert final["summary"] == "agreed on Q2"
    assert final["message_count"] == 2
    assert datetime.fromisoformat(final["ended_at"]).timestamp() == START + 90
    with pytest.raises(ConversationClosedError):
        await conversations.end_conversation(cid)
    # the first end is kept
    assert (await conversations.get_conversation(cid))["summary"] == "agreed on Q2"
    # history stays readable after the end
    assert len(await conversations.get_conversation_history(cid)) == 2


async def test_list_conversations(conversations: ConversationSystem, clock: ManualClock) -> None:
    c1 = await conversations.start_conversation(["a", "b"], "one")
    clock.advance(1)
    c2 = await conversations.start_conversation(["b", "c"], "two")
    clock.advance(1)
    c3 = await conversations.start_conversation(["c"], "three")
    await conversations.end_conversation(c2)
    ids = [c["conversation_id"] for c in await conversations.list_conversations()]
    assert ids == [c1, c2, c3]
    assert [c["conversation_id"] for c in await conversations.list_conversations("active")] == [
        c1,
        c3,
    ]
    assert [c["conversation_id"] for c in await conversations.list_conversations("ended")] == [c2]
    by_b = await conversations.list_conversations(participant="b")
    assert [c["conversation_id"] for c in by_b] == [c1, c2]
    both = await conversations.list_conversations(state="active", participant="c")
    assert [c["conversation_id"] for c in both] == [c3]
    with pytest.raises(InvalidMessageError):
        await conversations.list_conversations(state="open")


# -- turns -----------------------------------------------------------------------------


async def test_add_message_dict_content_and_metadata(conversations: ConversationSystem) -> None:
    cid = await conversations.start_conversation(["a", "b"], "t")
    mid = await conversations.add_message(
        cid, "b", {"revenue": 1.2e6, "currency": "EUR"}, "response", metadata={"model": "m1"}
    )
    mid2 = await conversations.add_message(cid, "a", "thanks")
    assert mid != mid2
    history = await conversations.get_conversation_history(cid)
    assert [t["message_id"] for t in history] == [mid, mid2]
    assert history[0]["content"] == {"revenue": 1.2e6, "currency": "EUR"}
    assert history[0]["message_type"] == "response"
    assert history[0]["metadata"] == {"model": "m1"}
    assert history[1]["message_type"] == "query"  # the default
    assert history[1]["metadata"] == {}


async def test_history_paging(conversations: ConversationSystem) -> None:
    cid = await _with_turns(conversations, 7)
    everything = await conversations.get_conversation_history(cid)
    assert [t["content"] for t in everything] == [f"m{i}" for i in range(7)]
    assert [t["sequence"] for t in everything] == list(range(1, 8))
    page = await conversations.get_conversation_history(cid, offset=2, limit=3)
    assert [t["content"] for t in page] == ["m2", "m3", "m4"]
    assert [t["content"] for t in await conversations.get_conversation_history(cid, 5)] == [
        "m5",
        "m6",
    ]
    assert await conversations.get_conversation_history(cid, offset=7) == []
    assert await conversations.get_conversation_history(cid, limit=0) == []
    with pytest.raises(InvalidMessageError):
        await conversations.get_conversation_history(cid, offset=-1)
    with pytest.raises(InvalidMessageError):
        await conversations.get_conversation_history(cid, limit=-2)


async def test_context_contents_and_max_messages(
    conversations: ConversationSystem, clock: ManualClock
) -> None:
    cid = await conversations.start_conversation(
        ["ceo_agent", "cfo_agent"], "planning", {"quarter": "Q2"}
    )
    await conversations.add_message(cid, "ceo_agent", "revenue?")
    await conversations.add_message(cid, "cfo_agent", {"text": "1.2M", "confidence": 0.8})
    await conversations.add_message(cid, "cfo_agent", {"table": [1, 2]}, MessageType.RESPONSE)
    await conversations.add_message(cid, "ceo_agent", "ok")

    context = await conversations.get_context(cid, max_messages=3)
    assert context["conversation_id"] == cid
    assert context["topic"] == "planning"
    assert context["participants"] == ["ceo_agent", "cfo_agent"]
    assert context["metadata"] == {"quarter": "Q2"}
    assert context["state"] == "active"
    assert context["ended_at"] is None
    assert context["message_count"] == 4
    assert [m["sequence"] for m in context["messages"]] == [2, 3, 4]
    assert context["chat"] == [
        {"role": "user", "name": "cfo_agent", "content": "1.2M"},
        {"role": "user", "name": "cfo_agent", "content": '{"table":[1,2]}'},
        {"role": "user", "name": "ceo_agent", "content": "ok"},
    ]

    as_cfo = await conversations.get_context(cid, max_messages=20, agent_id="cfo_agent")
    assert [m["sequence"] for m in as_cfo["messages"]] == [1, 2, 3, 4]
    assert [c["role"] for c in as_cfo["chat"]] == ["user", "assistant", "assistant", "user"]

    assert (await conversations.get_context(cid, max_messages=0))["messages"] == []
    assert len((await conversations.get_context(cid, max_messages=None))["messages"]) == 4
    with pytest.raises(InvalidMessageError):
        await conversations.get_context(cid, max_messages=-1)

    await conversations.end_conversation(cid)
    ended = await conversations.get_context(cid)
    assert ended["state"] == "ended"
    assert ended["ended_at"] is not None


async def test_replay_in_order(conversations: ConversationSystem) -> None:
    cid = await _with_turns(conversations, 5)
    seen: list[tuple[int, str]] = []

    def sync_handler(turn: dict[str, Any]) -> None:
        seen.append((turn["sequence"], turn["content"]))

    assert await conversations.replay(cid, sync_handler) == 5
    assert seen == [(i + 1, f"m{i}") for i in range(5)]

    later: list[str] = []

    async def async_handler(turn: dict[str, Any]) -> None:
        later.append(turn["content"])

    assert await conversations.replay(cid, async_handler, from_sequence=4) == 2
    assert later == ["m3", "m4"]
    assert await conversations.replay(cid, sync_handler, from_sequence=99) == 0
    with pytest.raises(InvalidMessageError):
        await conversations.replay(cid, sync_handler, from_sequence=0)


async def test_replay_pages_through_long_history(storage_manager: StorageManager) -> None:
    conversations = ConversationSystem(storage_manager)
    cid = await conversations.start_conversation(["a"], "long")
    for i in range(600):
        await storage_manager.append(
            "aos.conversation_turns",
            cid,
            {
                "message_id": str(i),
                "sender_id": "a",
                "content": str(i),
                "message_type": "query",
                "timestamp": "2025-01-01T00:00:00+00:00",
                "metadata": {},
            },
        )
    seen: list[int] = []
    assert await conversations.replay(cid, lambda t: seen.append(int(t["content"]))) == 600
    assert seen == list(range(600))


# -- bad input -------------------------------------------------------------------------


async def test_unknown_conversation(conversations: ConversationSystem) -> None:
    for call in (
        conversations.add_message("nope", "a", "hi"),
        conversations.get_conversation_history("nope"),
        conversations.get_context("nope"),
        conversations.get_conversation("nope"),
        conversations.end_conversation("nope"),
        conversations.replay("nope", print),
    ):
        with pytest.raises(ConversationNotFoundError) as info:
            await call
        assert isinstance(info.value, KeyError)
        assert "nope" in str(info.value)


async def test_ended_conversation_refuses_messages(conversations: ConversationSystem) -> None:
    cid = await _with_turns(conversations, 1)
    await conversations.end_conversation(cid)
    with pytest.raises(ConversationClosedError):
        await conversations.add_message(cid, "a", "too late")
    assert len(await conversations.get_conversation_history(cid)) == 1


async def test_non_participant_sender(conversations: ConversationSystem) -> None:
    cid = await conversations.start_conversation(["a", "b"], "t")
    with pytest.raises(NotAParticipantError) as info:
        await conversations.add_message(cid, "mallory", "hello")
    assert isinstance(info.value, PermissionError)
    assert await conversations.get_conversation_history(cid) == []


@pytest.mark.parametrize("participants", [[], ["a", ""], "ceo_agent", ["a", None], None, [3]])
async def test_bad_participants(conversations: ConversationSystem, participants: Any) -> None:
    with pytest.raises(InvalidMessageError):
        await conversations.start_conversation(participants, "t")
    assert await conversations.list_conversations() == []


async def test_bad_arguments(conversations: ConversationSystem) -> None:
    with pytest.raises(InvalidMessageError):
        await conversations.start_conversation(["a"], 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError):
        await conversations.start_conversation(["a"], "t", metadata={"x": object()})
    with pytest.raises(InvalidMessageError):
        await conversations.start_conversation(["a"], "t", metadata=[1])  # type: ignore[arg-type]
    cid = await conversations.start_conversation(["a"], "t")
    with pytest.raises(InvalidMessageError):
        await conversations.add_message(cid, "a", 42)  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError):
        await conversations.add_message(cid, "a", {"x": {1, 2}})
    with pytest.raises(InvalidMessageError):
        await conversations.add_message(cid, "a", "hi", message_type="gossip")
    with pytest.raises(InvalidMessageError):
        await conversations.add_message(cid, "", "hi")
    with pytest.raises(InvalidMessageError):
        await conversations.end_conversation(cid, summary=3)  # type: ignore[arg-type]
    assert await conversations.get_conversation_history(cid) == []
    with pytest.raises(ConversationError):
        ConversationSystem(object())  # type: ignore[arg-type]


# -- across processes ------------------------------------------------------------------

_STARTER = textwrap.dedent(
    """
    import asyncio, sys
    from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
    from AgentOperatingSystem.messaging.types import MessageType
    from AgentOperatingSystem.storage.manager import StorageManager

    async def main():
        async with StorageManager(sys.argv[1]) as storage_manager:
            conversations = ConversationSystem(storage_manager)
            cid = await conversations.start_conversation(
                participants=["ceo_agent", "cfo_agent"], topic="quarterly_planning",
                metadata={"quarter": "Q2", "year": 2025})
            await conversations.add_message(
                conversation_id=cid, sender_id="ceo_agent",
                content="What's our revenue projection for Q2?", message_type=MessageType.QUERY)
            print(cid)

    asyncio.run(main())
    """
)

_READER = textwrap.dedent(
    """
    import asyncio, json, sys
    from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
    from AgentOperatingSystem.storage.manager import StorageManager

    async def main():
        async with StorageManager(sys.argv[1]) as storage_manager:
            conversations = ConversationSystem(storage_manager)
            context = await conversations.get_context(sys.argv[2])
            print(json.dumps(context))

    asyncio.run(main())
    """
)


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


async def test_conversation_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    cid = _run(_STARTER, url).strip()
    assert cid

    async with StorageManager(url) as storage_manager:
        conversations = ConversationSystem(storage_manager)
        history = await conversations.get_conversation_history(cid)
        assert [(t["sender_id"], t["content"]) for t in history] == [
            ("ceo_agent", "What's our revenue projection for Q2?")
        ]
        await conversations.add_message(cid, "cfo_agent", "About 1.2M", MessageType.RESPONSE)
        await conversations.end_conversation(cid, summary="projection given")

    context = json.loads(_run(_READER, url, cid))
    assert context["state"] == "ended"
    assert context["summary"] == "projection given"
    assert context["topic"] == "quarterly_planning"
    assert context["metadata"] == {"quarter": "Q2", "year": 2025}
    assert [(m["sequence"], m["sender_id"], m["message_type"]) for m in context["messages"]] == [
        (1, "ceo_agent", "query"),
        (2, "cfo_agent", "response"),
    ]


# -- delivery through a bus ------------------------------------------------------------


class RecordingBus(MessageBus):
    """A real MessageBus on ``memory://`` that also keeps, in order, what it accepted:
    ``published`` through ``publish_batch`` (all or none, as the conversation uses it) and
    ``single`` through ``publish``."""

    def __init__(self, **config: Any) -> None:
        super().__init__(MessageBusConfig(broker_url="memory://", **config))
        self.published: list[Message] = []
        self.single: list[Message] = []

    async def publish_batch(self, messages: Iterable[Message], **options: Any) -> Any:
        batch = list(messages)
        results = await super().publish_batch(batch, **options)
        self.published.extend(batch)
        return results

    async def publish(self, message: Message | None = None, /, **options: Any) -> Any:
        result = await super().publish(message, **options)
        self.single.append(message if message is not None else options["message"])
        return result


@pytest.fixture
async def recording_bus() -> AsyncIterator[RecordingBus]:
    async with RecordingBus() as bus:
        yield bus


class PerAgentPublisher:
    """A publisher that is not a MessageBus: only ``publish`` (the MessagePublisher protocol;
    no ``publish_batch``, ``started`` or ``security``), handing each message to the real bus
    its recipient lives on. The conversation cannot check those buses before storing, so a
    refusal (here an access-control one) comes after the turn is stored."""

    def __init__(self, buses: dict[str, MessageBus]) -> None:
        self.buses = buses
        self.published: list[Message] = []

    async def publish(self, message: Message) -> Any:
        assert message.recipient_id is not None
        result = await self.buses[message.recipient_id].publish(message)
        self.published.append(message)
        return result


async def test_add_message_publishes_to_other_participants(
    storage_manager: StorageManager, recording_bus: RecordingBus
) -> None:
    bus = recording_bus
    conversations = ConversationSystem(storage_manager, bus)
    cid = await conversations.start_conversation(["ceo_agent", "cfo_agent", "cto_agent"], "plan")
    mid = await conversations.add_message(
        cid, "ceo_agent", "Q2?", MessageType.QUERY, priority=MessagePriority.HIGH
    )
    await conversations.add_message(cid, "cfo_agent", {"answer": 1}, MessageType.RESPONSE)
    first, second, third, fourth = bus.published
    assert fourth.recipient_id == "cto_agent"
    assert [m.recipient_id for m in bus.published] == [
        "cfo_agent",
        "cto_agent",
        "ceo_agent",
        "cto_agent",
    ]
    assert first.content == {"text": "Q2?"}
    assert first.sender_id == "ceo_agent"
    assert first.message_type is MessageType.QUERY
    assert first.priority is MessagePriority.HIGH
    assert first.correlation_id == cid
    assert first.metadata["conversation_id"] == cid
    assert first.metadata["conversation_message_id"] == mid
    assert first.metadata["conversation_sequence"] == 1
    assert first.message_id != second.message_id
    assert third.content == {"answer": 1}
    assert third.message_type is MessageType.RESPONSE
    # one batch per turn, none message by message; and the bus's queues hold exactly these
    assert bus.single == []
    assert [m.message_id for m in await drain(bus, "cfo_agent")] == [first.message_id]
    assert [m.message_id for m in await drain(bus, "ceo_agent")] == [third.message_id]
    cto = await drain(bus, "cto_agent")
    assert [m.message_id for m in cto] == [second.message_id, fourth.message_id]
    assert cto[1].metadata["conversation_sequence"] == 2


async def refused_turn(
    conversations: ConversationSystem, error: type[Exception], text: str
) -> tuple[str, str]:
    """ceo_agent says ``text`` in a new conversation with cfo_agent and cto_agent, and its
    delivery fails with ``error``: the conversation's id and the notes on the error."""
    cid = await conversations.start_conversation(["ceo_agent", "cfo_agent", "cto_agent"], "plan")
    with pytest.raises(error) as info:
        await conversations.add_message(cid, "ceo_agent", text)
    return cid, " ".join(getattr(info.value, "__notes__", []))


async def test_failed_delivery_propagates_after_storing(storage_manager: StorageManager) -> None:
    async with (
        MessageBus(MessageBusConfig(broker_url="memory://")) as cfo_bus,
        MessageBus(MessageBusConfig(broker_url="memory://")) as cto_bus,
    ):
        await cto_bus.set_permissions("ceo_agent", can_publish=["event"])
        bus = PerAgentPublisher({"cfo_agent": cfo_bus, "cto_agent": cto_bus})
        conversations = ConversationSystem(storage_manager, bus)
        cid, notes = await refused_turn(conversations, PermissionDeniedError, "secret")
        assert "was stored" in notes and "cto_agent" in notes
        assert "delivered to ['cfo_agent'], not delivered to ['cto_agent']" in notes
        assert [m.recipient_id for m in bus.published] == ["cfo_agent"]
        history = await conversations.get_conversation_history(cid)
        assert [t["content"] for t in history] == ["secret"]
        # what the buses hold: the turn for cfo_agent, nothing for cto_agent
        (delivered,) = await drain(cfo_bus, "cfo_agent")
        assert delivered.content == {"text": "secret"}
        assert await cto_bus.queue_depth("cto_agent") == 0


async def test_batch_delivery_failure_delivers_to_none(storage_manager: StorageManager) -> None:
    # cto_agent's queue is full (max_queue_size=1): the engine refuses the whole batch
    async with RecordingBus(max_queue_size=1) as bus:
        filler = Message(message_type=MessageType.TASK, sender_id="o", recipient_id="cto_agent")
        await bus.publish_batch([filler])
        conversations = ConversationSystem(storage_manager, bus)
        cid, notes = await refused_turn(conversations, QueueFullError, "hello")
        assert "was stored" in notes and "none of ['cfo_agent', 'cto_agent']" in notes
        assert bus.single == []
        assert len(await conversations.get_conversation_history(cid)) == 1
        # nothing of the turn reached any queue: cfo_agent's is empty, cto_agent's has the filler
        assert bus.published == [filler]
        assert await drain(bus, "cfo_agent") == []
        assert [m.message_id for m in await drain(bus, "cto_agent")] == [filler.message_id]


@pytest.fixture
async def message_bus() -> AsyncIterator[MessageBus]:
    async with MessageBus(MessageBusConfig(broker_url="memory://")) as bus:
        yield bus


async def test_spec_example_with_a_real_bus_delivers_to_other_participants(
    storage_manager: StorageManager, message_bus: MessageBus
) -> None:
    conversation_system = ConversationSystem(storage_manager, message_bus)
    conversation_id = await conversation_system.start_conversation(
        participants=["ceo_agent", "cfo_agent", "cto_agent"],
        topic="quarterly_planning",
        metadata={"quarter": "Q2", "year": 2025},
    )
    message_id = await conversation_system.add_message(
        conversation_id=conversation_id,
        sender_id="ceo_agent",
        content="What's our revenue projection for Q2?",
        message_type=MessageType.QUERY,
    )
    for agent in ("cfo_agent", "cto_agent"):
        received = await message_bus.get_messages(agent, limit=10)
        assert len(received) == 1
        msg = received[0]
        assert msg.sender_id == "ceo_agent"
        assert msg.recipient_id == agent
        assert msg.message_type is MessageType.QUERY
        assert msg.content == {"text": "What's our revenue projection for Q2?"}
        assert msg.correlation_id == conversation_id
        assert msg.metadata["conversation_id"] == conversation_id
        assert msg.metadata["conversation_message_id"] == message_id
        await message_bus.acknowledge(msg.message_id, agent)
    assert await message_bus.get_messages("ceo_agent", limit=10) == []

    await conversation_system.add_message(
        conversation_id, "cfo_agent", {"revenue": 1_200_000}, MessageType.RESPONSE
    )
    (answer,) = await message_bus.get_messages("ceo_agent", limit=10)
    assert answer.content == {"revenue": 1_200_000}
    assert answer.message_type is MessageType.RESPONSE
    assert len(await message_bus.get_messages("cto_agent", limit=10)) == 1
    assert await message_bus.get_messages("cfo_agent", limit=10) == []


async def test_real_bus_refusal_stores_nothing(
    storage_manager: StorageManager, message_bus: MessageBus
) -> None:
    conversations = ConversationSystem(storage_manager, message_bus)
    cid = await conversations.start_conversation(["ceo_agent", "cfo_agent"], "plan")
    await message_bus.set_permissions("ceo_agent", can_publish=["event"])
    with pytest.raises(PermissionDeniedError):
        await conversations.add_message(cid, "ceo_agent", "Q2?", MessageType.QUERY)
    assert await conversations.get_conversation_history(cid) == []
    assert await message_bus.get_messages("cfo_agent", limit=10) == []
    # the other participant may still talk
    await conversations.add_message(cid, "cfo_agent", "hello", MessageType.QUERY)
    assert len(await message_bus.get_messages("ceo_agent", limit=10)) == 1
    assert len(await conversations.get_conversation_history(cid)) == 1


async def test_stopped_bus_stores_nothing(storage_manager: StorageManager) -> None:
    bus = MessageBus(MessageBusConfig(broker_url="memory://"))
    conversations = ConversationSystem(storage_manager, bus)
    cid = await conversations.start_conversation(["a", "b"], "t")
    with pytest.raises(BrokerClosedError):
        await conversations.add_message(cid, "a", "hi")
    assert await conversations.get_conversation_history(cid) == []
