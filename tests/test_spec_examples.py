"""The spec's code examples (sections 3.1, 3.2, 3.6 alone and with the bus, 4.1-4.4, 5.1-5.3,
6.1-6.3, 7.1, 7.3), as written, with the handlers and data they refer to defined around them.

3.1 runs on the embedded default (``enable_persistence=True`` -> SQLite in ``AOS_DATA_DIR``);
the rest on the same default unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import zstandard

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import EventStream, MessageBus
from AgentOperatingSystem.messaging.router import MessageRouter
from AgentOperatingSystem.messaging.types import Message, MessagePriority, MessageType
from tests.support.messages import task
from tests.support.waiting import eventually

logger = logging.getLogger("spec-examples")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AOS_DATA_DIR", str(tmp_path / "aos"))
    return tmp_path / "aos"


@pytest.fixture
async def message_bus(data_dir: Path) -> AsyncIterator[MessageBus]:
    config = MessageBusConfig(
        enable_persistence=True, max_queue_size=1000, message_ttl_seconds=3600, poll_interval=0.02
    )
    bus = MessageBus(config)
    await bus.start()
    yield bus
    await bus.stop()


async def test_3_1_initialization_on_the_embedded_default(data_dir: Path) -> None:
    config = MessageBusConfig(
        enable_persistence=True, max_queue_size=1000, message_ttl_seconds=3600
    )

    message_bus = MessageBus(config)
    await message_bus.start()
    try:
        assert (data_dir / "messages.db").exists()  # durable: SQLite in the data directory
    finally:
        await message_bus.stop()


async def test_3_1_publish_subscribe_queue_and_request(message_bus: MessageBus) -> None:
    processed: list[Message] = []

    async def process_message(message: Message) -> None:
        processed.append(message)

    # 1. Publishing Messages
    message = Message(
        message_id="msg_001",
        message_type=MessageType.TASK,
        sender_id="orchestrator",
        recipient_id="ceo_agent",
        content={"task": "analyze_quarterly_report", "data": {"quarter": "Q2", "year": 2025}},
        priority=MessagePriority.HIGH,
        metadata={"correlation_id": "task_123"},
    )

    await message_bus.publish(message)
    assert await message_bus.queue_depth("ceo_agent") == 1

    # 3. Message Queuing (before a handler takes the queue over)
    messages = await message_bus.get_messages("ceo_agent", limit=10)

    for message in messages:
        await process_message(message)
        await message_bus.acknowledge(message.message_id)
    assert [m.message_id for m in processed] == ["msg_001"]
    assert processed[0].content["data"] == {"quarter": "Q2", "year": 2025}
    assert await message_bus.queue_depth("ceo_agent") == 0

    # 2. Subscribing to Messages
    async def message_handler(message: Message):  # type: ignore[no-untyped-def]
        print(f"Received message: {message.content}")
        # Process message
        await process_message(message)

    await message_bus.subscribe(
        agent_id="ceo_agent",
        message_types=[MessageType.TASK, MessageType.QUERY],
        handler=message_handler,
    )
    await message_bus.publish(
        Message(
            message_type=MessageType.QUERY,
            sender_id="cfo_agent",
            recipient_id="ceo_agent",
            content={"q": "strategy?"},
        )
    )
    await eventually(lambda: len(processed) == 2)
    assert processed[1].content == {"q": "strategy?"}

    # 4. Request-Response Pattern
    async def cfo(message: Message) -> dict[str, Any]:
        return {"revenue": "4.2M", "question": message.content["query"]}

    await message_bus.subscribe("cfo_agent", [MessageType.QUERY], cfo)
    response = await message_bus.request(
        sender_id="orchestrator",
        recipient_id="cfo_agent",
        content={"query": "What's the Q2 revenue?"},
        timeout=30,
    )

    print(f"Response: {response.content}")
    assert response.content == {"revenue": "4.2M", "question": "What's the Q2 revenue?"}
    assert response.message_type is MessageType.RESPONSE


def test_3_2_message_structure() -> None:
    from dataclasses import fields
    from datetime import datetime

    names = [f.name for f in fields(Message)]
    assert names == [
        "message_id",
        "message_type",
        "sender_id",
        "recipient_id",
        "content",
        "timestamp",
        "priority",
        "metadata",
        "correlation_id",
        "reply_to",
        "ttl",
    ]
    assert [t.value for t in MessageType] == [
        "task",
        "query",
        "response",
        "event",
        "command",
        "status",
        "notification",
        "error",
    ]
    assert {p.name: p.value for p in MessagePriority} == {
        "CRITICAL": 0,
        "HIGH": 1,
        "NORMAL": 2,
        "LOW": 3,
        "BACKGROUND": 4,
    }
    m = Message(message_type=MessageType.EVENT, sender_id="a", content={})
    assert isinstance(m.timestamp, datetime) and m.timestamp.tzinfo is not None
    assert m.priority is MessagePriority.NORMAL and m.metadata == {} and m.ttl is None
    assert len(m.message_id) >= 16 and m.message_id != Message().message_id


def spec_3_6_router() -> MessageRouter:
    """The router of section 3.6 with its two rules, as written."""
    router = MessageRouter()

    # Add routing rule
    router.add_rule(
        name="high_priority_to_ceo",
        condition=lambda msg: msg.priority == MessagePriority.HIGH,
        target="ceo_agent",
    )

    # Add load balancing rule
    router.add_load_balancing_rule(
        name="analysis_tasks",
        condition=lambda msg: msg.content.get("task_type") == "analysis",
        targets=["analyst_1", "analyst_2", "analyst_3"],
        strategy="round_robin",
    )
    return router


def test_3_6_message_router() -> None:
    router = spec_3_6_router()
    message = Message(
        message_type=MessageType.TASK,
        sender_id="orchestrator",
        content={"task_type": "analysis"},
        priority=MessagePriority.HIGH,
    )
    # Route message
    target_agent = router.route(message)
    assert target_agent == "ceo_agent"  # first matching rule wins

    normal = message.copy(priority=MessagePriority.NORMAL)
    assert [router.route(normal) for _ in range(4)] == [
        "analyst_1",
        "analyst_2",
        "analyst_3",
        "analyst_1",
    ]
    assert router.route(task(None, content={"task_type": "report"})) is None


async def test_3_6_bus_uses_its_router_for_messages_without_recipient(
    message_bus: MessageBus,
) -> None:
    router = spec_3_6_router()
    message_bus.router = router
    await message_bus.publish(
        message_type=MessageType.TASK, content={"x": 1}, priority=MessagePriority.HIGH
    )
    for _ in range(6):
        await message_bus.publish(message_type=MessageType.TASK, content={"task_type": "analysis"})
    assert await message_bus.queue_depth("ceo_agent") == 1
    assert [await message_bus.queue_depth(f"analyst_{i}") for i in (1, 2, 3)] == [2, 2, 2]


async def test_4_1_publish_subscribe(message_bus: MessageBus) -> None:
    heard: dict[str, list[str]] = {"cfo_agent": [], "ceo_agent": []}
    for agent in heard:

        async def on_event(msg: Message, agent: str = agent) -> None:
            heard[agent].append(msg.content["event"])

        await message_bus.subscribe(agent, [MessageType.EVENT], on_event)

    # Publisher
    await message_bus.publish(
        message_type=MessageType.EVENT, content={"event": "quarterly_report_ready"}
    )

    # Subscribers automatically receive the message
    # Multiple subscribers can listen to the same event
    await eventually(lambda: all(heard.values()))
    assert heard == {
        "cfo_agent": ["quarterly_report_ready"],
        "ceo_agent": ["quarterly_report_ready"],
    }


async def test_4_2_request_response(message_bus: MessageBus) -> None:
    async def cfo(msg: Message) -> dict[str, Any]:
        return {"forecast": [1.1, 1.3], "for": msg.content["query"]}

    await message_bus.subscribe("cfo_agent", [MessageType.QUERY], cfo)

    # Request
    response = await message_bus.request(
        recipient_id="cfo_agent", content={"query": "revenue_forecast"}, timeout=30
    )

    # Response is automatically correlated
    print(response.content)
    assert response.content == {"forecast": [1.1, 1.3], "for": "revenue_forecast"}
    assert response.correlation_id is not None


async def test_4_3_command(message_bus: MessageBus) -> None:
    commands: list[dict[str, Any]] = []

    async def agent(msg: Message) -> None:
        commands.append(msg.content)

    await message_bus.subscribe("agent_id", [MessageType.COMMAND], agent)

    # Send command
    await message_bus.send_command(
        recipient_id="agent_id", command="execute_task", parameters={"task_id": "task_001"}
    )

    await eventually(lambda: commands)
    assert commands == [{"command": "execute_task", "parameters": {"task_id": "task_001"}}]


async def test_4_4_event_streaming(
    message_bus: MessageBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example below iterates the stream as written; to publish only once it listens,
    # the test keeps the streams the bus hands out and waits for each one to be ready.
    opened: list[EventStream] = []
    hand_out = message_bus.stream_events

    def recording(*args: Any, **kwargs: Any) -> EventStream:
        stream = hand_out(*args, **kwargs)
        opened.append(stream)
        return stream

    monkeypatch.setattr(message_bus, "stream_events", recording)
    handled: list[str] = []
    done = asyncio.Event()

    async def handle_event(event: Message) -> None:
        handled.append(event.content["event"])
        if len(handled) == 2:
            done.set()

    async def consumer() -> None:
        # Stream events
        async for event in message_bus.stream_events(
            event_types=["task_completed", "agent_status_changed"]
        ):
            await handle_event(event)

    task = asyncio.create_task(consumer())
    await eventually(lambda: opened and opened[0].ready.is_set(), what="the stream to listen")
    for name in ("task_started", "task_completed", "agent_status_changed"):
        await message_bus.publish(message_type=MessageType.EVENT, content={"event": name})
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert handled == ["task_completed", "agent_status_changed"]


async def test_5_1_at_least_once(message_bus: MessageBus) -> None:
    attempts: list[int] = []

    async def process_message(message: Message) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("transient failure")

    await message_bus.publish(
        Message(
            message_type=MessageType.TASK,
            sender_id="o",
            recipient_id="agent_id",
            content={"job": 1},
        ),
        retry_policy={"max_attempts": 3, "initial_delay": 0.0},
    )
    for _ in range(2):
        # Message is delivered at least once
        # Requires explicit acknowledgment
        message = await message_bus.receive("agent_id")
        try:
            await process_message(message)  # type: ignore[arg-type]
            await message_bus.acknowledge(message.message_id)  # type: ignore[union-attr]
        except Exception as e:
            # Message will be redelivered
            await message_bus.nack(message.message_id)  # type: ignore[union-attr]
    assert len(attempts) == 2
    assert await message_bus.queue_depth("agent_id") == 0
    assert await message_bus.receive("agent_id", timeout=0.05) is None


async def test_5_2_at_most_once(message_bus: MessageBus) -> None:
    message = Message(
        message_type=MessageType.NOTIFICATION,
        sender_id="o",
        recipient_id="ceo_agent",
        content={"fyi": True},
    )

    # Message is delivered at most once
    # No acknowledgment required
    # Faster but less reliable
    await message_bus.publish(message=message, delivery_mode="at_most_once")

    (got,) = await message_bus.get_messages("ceo_agent")
    assert got.content == {"fyi": True}
    assert await message_bus.queue_depth("ceo_agent") == 0  # gone on delivery, never redelivered


async def test_5_3_exactly_once(message_bus: MessageBus) -> None:
    task_id = "001"
    for _ in range(3):
        message = Message(
            message_type=MessageType.TASK,
            sender_id="o",
            recipient_id="ceo_agent",
            content={"task_id": task_id},
        )

        # Message is delivered exactly once
        # Uses deduplication and idempotency
        await message_bus.publish(
            message=message, delivery_mode="exactly_once", idempotency_key=f"task_{task_id}"
        )
    assert await message_bus.queue_depth("ceo_agent") == 1


async def test_6_1_retry_with_exponential_backoff(data_dir: Path) -> None:
    from AgentOperatingSystem.messaging.clock import ManualClock

    clock = ManualClock()
    async with MessageBus(MessageBusConfig(), clock=clock) as message_bus:
        message = Message(message_type=MessageType.TASK, sender_id="o", recipient_id="ceo_agent")

        # Automatic retry with exponential backoff
        await message_bus.publish(
            message=message,
            retry_policy={"max_attempts": 3, "backoff_multiplier": 2, "initial_delay": 1},
        )
        # Each delivery comes back exactly ``initial_delay * 2**(n-1)`` seconds after the
        # n-th failure: not a moment before (checked 10 ms early), and then at once.
        delivered: list[tuple[float, str]] = []
        start = clock.now()
        for wait in (0.0, 1.0, 2.0):
            clock.advance(wait - 0.01 if wait else 0)
            assert wait == 0 or await message_bus.get_messages("ceo_agent") == []
            clock.advance(0.01 if wait else 0)
            (m,) = await message_bus.get_messages("ceo_agent")
            delivered.append((round(clock.now() - start, 6), m.message_id))
            await message_bus.nack(m.message_id, error="still failing")
        assert delivered == [
            (0.0, message.message_id),
            (1.0, message.message_id),
            (3.0, message.message_id),
        ]
        # the third failure was the last attempt: dead-lettered at once, not redelivered
        assert await message_bus.queue_depth("ceo_agent") == 0
        (dead,) = await message_bus.get_dead_letter_messages("ceo_agent")
        assert dead.message_id == message.message_id
        assert dead.metadata["aos.dead_letter.reason"] == "max_attempts"
        assert dead.metadata["aos.dead_letter.attempts"] == 3
        assert "still failing" in dead.metadata["aos.dead_letter.error"]


async def test_6_2_dead_letter_queue(
    message_bus: MessageBus, caplog: pytest.LogCaptureFixture
) -> None:
    def is_retryable(message: Message) -> bool:
        return message.metadata["aos.dead_letter.reason"] == "max_attempts"

    fail = True
    handled: list[str] = []

    async def ceo(msg: Message) -> None:
        if fail:
            raise ConnectionError("downstream unavailable")
        handled.append(msg.message_id)

    await message_bus.subscribe("ceo_agent", [MessageType.TASK], ceo)
    sent = Message(message_type=MessageType.TASK, sender_id="o", recipient_id="ceo_agent")
    await message_bus.publish(sent, retry_policy={"max_attempts": 2, "initial_delay": 0})
    await eventually(
        lambda: message_bus.dead_letter_depth("ceo_agent"), what="the message in the DLQ"
    )
    fail = False

    # Messages that fail after max retries go to DLQ
    dlq_messages = await message_bus.get_dead_letter_messages("ceo_agent")

    for message in dlq_messages:
        # Analyze failure
        logger.error(f"Failed message: {message}")

        # Optionally reprocess
        if is_retryable(message):
            await message_bus.resubmit(message)

    assert [m.message_id for m in dlq_messages] == [sent.message_id]
    assert (
        "ConnectionError: downstream unavailable"
        in dlq_messages[0].metadata["aos.dead_letter.error"]
    )
    await eventually(lambda: handled == [sent.message_id])
    assert await message_bus.dead_letter_depth("ceo_agent") == 0


async def test_6_3_circuit_breaker_integration(message_bus: MessageBus) -> None:
    from AgentOperatingSystem.reliability.circuit_breaker import CircuitBreaker

    circuit = CircuitBreaker(name="message_delivery")

    @circuit.protected
    async def send_message_with_protection(message):  # type: ignore[no-untyped-def]
        await message_bus.publish(message)

    await send_message_with_protection(
        Message(message_type=MessageType.TASK, sender_id="o", recipient_id="ceo_agent")
    )
    assert await message_bus.queue_depth("ceo_agent") == 1
    assert circuit.stats.successes == 1


async def test_7_1_batching(message_bus: MessageBus) -> None:
    message1, message2, message3 = (
        Message(
            message_type=MessageType.TASK, sender_id="o", recipient_id="ceo_agent", content={"i": i}
        )
        for i in range(3)
    )

    # Batch messages for efficiency
    messages = [message1, message2, message3]
    await message_bus.publish_batch(messages)

    got = await message_bus.get_messages("ceo_agent", limit=10)
    assert [m.content["i"] for m in got] == [0, 1, 2]


@pytest.mark.parametrize("algorithm", ["gzip", "zstd"])
async def test_7_3_compression(message_bus: MessageBus, data_dir: Path, algorithm: str) -> None:
    large_message = Message(
        message_type=MessageType.TASK,
        sender_id="o",
        recipient_id="ceo_agent",
        content={"report": "quarterly revenue line " * 5000},
    )

    # Compress large messages
    await message_bus.publish(message=large_message, compress=True, compression_algorithm=algorithm)

    (got,) = await message_bus.get_messages("ceo_agent")
    assert got.content == large_message.content
    # What the engine stored is compressed: far smaller than the content itself, ...
    with closing(sqlite3.connect(data_dir / "messages.db")) as db:
        rows = db.execute("SELECT id, body FROM messages WHERE queue = 'ceo_agent'").fetchall()
    ((stored_id, body),) = rows
    assert stored_id == large_message.message_id
    assert len(body) < len(large_message.content["report"]) / 20
    # ... an envelope whose content is only there as the named algorithm's output, which
    # decompresses to the content's JSON.
    envelope = json.loads(body)
    assert envelope["aoscompression"] == algorithm
    assert "data" not in envelope
    assert large_message.content["report"][:40] not in body.decode()
    packed = base64.b64decode(envelope["data_base64"])
    assert packed[:4] == _MAGIC[algorithm]
    assert json.loads(_DECOMPRESS[algorithm](packed)) == large_message.content


_MAGIC = {"gzip": b"\x1f\x8b\x08\x00", "zstd": b"\x28\xb5\x2f\xfd"}
_DECOMPRESS = {
    "gzip": gzip.decompress,
    "zstd": lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
}
