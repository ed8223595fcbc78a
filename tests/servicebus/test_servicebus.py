"""ServiceBusManager on our engines (memory, SQLite, NATS): spec 3.5 as written, topics,
subscriptions, SQL filter rules, peek-lock settlement, dead letters, TTL, topic size.

NATS runs against the session ``nats-server`` the fixtures start (never the system one), in a
namespace of its own. Time-dependent tests use a ManualClock on memory and SQLite.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from AgentOperatingSystem.messaging.brokers.memory import MemoryBroker
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.errors import (
    BrokerClosedError,
    ConfigurationError,
    EntityExistsError,
    EntityNotFoundError,
    FilterSyntaxError,
    InvalidMessageError,
    LockLostError,
    TopicFullError,
    UnknownMessageError,
)
from AgentOperatingSystem.messaging.servicebus.manager import (
    DEFAULT_RULE_NAME,
    EngineServiceBus,
    ServiceBusManager,
    application_properties,
    servicebus_info,
    subscription_queue,
)
from AgentOperatingSystem.messaging.servicebus.sqlfilter import (
    CorrelationFilter,
    FalseFilter,
    SqlFilter,
    TrueFilter,
)
from AgentOperatingSystem.messaging.types import Message, MessagePriority, MessageType
from tests.support.waiting import eventually

ALL = ["memory", "sqlite", pytest.param("nats", marks=pytest.mark.nats)]
LOCAL = ["memory", "sqlite"]


def _url(request: pytest.FixtureRequest, engine: str, tmp_path: Path) -> str:
    if engine == "memory":
        return "memory://"
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'servicebus.db'}"
    nats_url = request.getfixturevalue("nats_url")
    namespace = request.getfixturevalue("nats_namespace")
    return f"{nats_url}?namespace={namespace}"


@pytest.fixture(params=ALL)
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request, request.param, tmp_path)


@pytest.fixture(params=LOCAL)
def local_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request, request.param, tmp_path)


@pytest.fixture
async def sb(engine_url: str) -> AsyncIterator[ServiceBusManager]:
    manager = ServiceBusManager(connection_string=engine_url, poll_interval=0.05)
    yield manager
    await manager.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def timed(local_url: str, clock: ManualClock) -> AsyncIterator[ServiceBusManager]:
    """A manager on memory/SQLite whose time moves only when the test says so."""
    manager = ServiceBusManager(connection_string=local_url, clock=clock, poll_interval=0.02)
    yield manager
    await manager.close()


async def drain(
    sb: ServiceBusManager, topic: str, sub: str, *, complete: bool = True
) -> list[Message]:
    """Everything available in a subscription now (completed unless told otherwise)."""
    out: list[Message] = []
    while True:
        batch = await sb.receive_messages(topic, sub, max_message_count=50, max_wait_time=0)
        if not batch:
            return out
        for message in batch:
            out.append(message)
            if complete:
                await sb.complete_message(message)


# ----------------------------------------------------------------------------- spec 3.5


@pytest.fixture(params=["sqlite", pytest.param("nats", marks=pytest.mark.nats), "memory"])
def spec_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _url(request, request.param, tmp_path)


async def test_spec_3_5_examples_run_as_written(spec_url: str) -> None:
    url = spec_url
    processed: list[Message] = []

    async def process_event(message: Message) -> None:
        processed.append(message)

    # Initialize with connection string (the spec reads it from
    # AZURE_SERVICE_BUS_CONNECTION_STRING; here it is an engine URL)
    service_bus = ServiceBusManager(connection_string=url)

    # The first example assumes its topic and subscription exist, as on Azure.
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

    loop_task = asyncio.create_task(service_bus_manager_example())
    await eventually(lambda: len(processed) == 1)
    assert processed[0].content == {
        "event_type": "task_completed",
        "agent_id": "ceo_agent",
        "task_id": "task_001",
    }
    await eventually(lambda: _count(service_bus, "agent_events", "orchestrator_subscription", 0))

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

    # The filter decides what reaches the subscription.
    await service_bus.send_to_topic(
        topic_name="agent_tasks", message={"agent_id": "cfo_agent", "task": "budget"}
    )
    await service_bus.send_to_topic(
        topic_name="agent_tasks", message={"agent_id": "ceo_agent", "task": "strategy"}
    )
    got = await drain(service_bus, "agent_tasks", "ceo_agent_tasks")
    assert [m.content["task"] for m in got] == ["strategy"]
    topic = await service_bus.get_topic("agent_tasks")
    assert (topic.max_size_in_mb, topic.default_message_ttl_seconds) == (1024, 3600)

    # The receive loop runs until the manager closes.
    assert not loop_task.done()
    await service_bus.close()
    await asyncio.wait_for(loop_task, 10)
    assert len(processed) == 1


async def _count(sb: ServiceBusManager, topic: str, sub: str, expected: int) -> bool:
    props = await sb.get_subscription_runtime_properties(topic, sub)
    return props.message_count == expected


# ----------------------------------------------------------------------------- filters


async def test_filters_decide_delivery_once_per_subscription(sb: ServiceBusManager) -> None:
    await sb.create_topic("events")
    await sb.create_subscription("events", "ceo", filter_rule="agent_id = 'ceo_agent'")
    await sb.create_subscription("events", "everything")
    await sb.create_subscription(
        "events", "urgent", filter_rule="priority > 5 AND sys.Label = 'task'"
    )
    await sb.create_subscription("events", "nothing", filter_rule="1=0")
    await sb.create_subscription(
        "events", "correlated", filter_rule=CorrelationFilter(correlation_id="c-1")
    )
    sent: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"n": 1, "agent_id": "ceo_agent", "priority": 9}, {"subject": "task"}),
        ({"n": 2, "agent_id": "cfo_agent", "priority": 9}, {"subject": "task"}),
        ({"n": 3, "agent_id": "ceo_agent", "priority": 1}, {"correlation_id": "c-1"}),
        ({"n": 4, "agent_id": "cto_agent"}, {"subject": "note", "correlation_id": "c-2"}),
        ({"n": 5, "nested": {"agent_id": "ceo_agent"}}, {}),
    ]
    for body, system in sent:
        await sb.send_to_topic("events", body, **system)

    async def numbers(sub: str) -> list[int]:
        return sorted(m.content["n"] for m in await drain(sb, "events", sub))

    assert await numbers("ceo") == [1, 3]  # the nested agent_id is not a property
    assert await numbers("everything") == [1, 2, 3, 4, 5]
    assert await numbers("urgent") == [1, 2]
    assert await numbers("nothing") == []
    assert await numbers("correlated") == [3]
    # Each matching message appeared once: nothing is left anywhere.
    for sub in ("ceo", "everything", "urgent", "nothing", "correlated"):
        assert (await sb.get_subscription_runtime_properties("events", sub)).message_count == 0
        assert await drain(sb, "events", sub) == []


async def test_any_rule_matches_and_rules_can_be_changed(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s", filter_rule="color = 'red'")
    await sb.add_rule("t", "s", "big", "size > 10")
    rules = await sb.list_rules("t", "s")
    assert [r.name for r in rules] == [DEFAULT_RULE_NAME, "big"]
    assert rules[0].filter == SqlFilter("color = 'red'")
    with pytest.raises(EntityExistsError):
        await sb.add_rule("t", "s", "big", "size > 1")

    await sb.send_to_topic("t", {"n": 1, "color": "red", "size": 20})  # both rules: once
    await sb.send_to_topic("t", {"n": 2, "color": "blue", "size": 20})
    await sb.send_to_topic("t", {"n": 3, "color": "red", "size": 1})
    await sb.send_to_topic("t", {"n": 4, "color": "blue", "size": 1})
    assert sorted(m.content["n"] for m in await drain(sb, "t", "s")) == [1, 2, 3]

    await sb.remove_rule("t", "s", DEFAULT_RULE_NAME)
    await sb.send_to_topic("t", {"n": 5, "color": "red", "size": 1})
    await sb.send_to_topic("t", {"n": 6, "color": "red", "size": 11})
    assert [m.content["n"] for m in await drain(sb, "t", "s")] == [6]

    await sb.remove_rule("t", "s", "big")
    with pytest.raises(EntityNotFoundError):
        await sb.remove_rule("t", "s", "big")
    await sb.send_to_topic("t", {"n": 7, "color": "red", "size": 50})
    assert await drain(sb, "t", "s") == []  # no rules: nothing arrives

    await sb.add_rule("t", "s", "all", TrueFilter())
    await sb.send_to_topic("t", {"n": 8})
    assert [m.content["n"] for m in await drain(sb, "t", "s")] == [8]


async def test_properties_and_system_properties(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription(
        "t", "s", filter_rule="region = 'eu' AND sys.MessageId = 'm-1' AND tier = 2"
    )
    await sb.create_subscription("t", "typed", filter_rule="sys.ContentType = 'text/plain'")
    await sb.create_subscription("t", "all")
    returned = await sb.send_to_topic(
        "t",
        {"region": "us", "tier": 2, "data": [1, 2]},
        properties={"region": "eu"},  # explicit properties win over the dict's fields
        message_id="m-1",
        correlation_id="corr",
        subject="subj",
        reply_to="back",
        to="ceo_agent",
    )
    assert returned == "m-1"
    await sb.send_to_topic("t", {"region": "eu", "tier": 2}, content_type="text/plain")
    [got] = await drain(sb, "t", "s")
    assert got.message_id == "m-1" and got.correlation_id == "corr" and got.reply_to == "back"
    assert got.content == {"region": "us", "tier": 2, "data": [1, 2]}
    assert application_properties(got) == {"region": "eu", "tier": 2}
    info = servicebus_info(got)
    assert info["system"]["subject"] == "subj" and info["system"]["to"] == "ceo_agent"
    assert info["topic"] == "t" and info["subscription"] == "s" and info["delivery_count"] == 1
    assert [m.content for m in await drain(sb, "t", "typed")] == [{"region": "eu", "tier": 2}]
    assert len(await drain(sb, "t", "all")) == 2

    with pytest.raises(InvalidMessageError):
        await sb.send_to_topic("t", {"a": 1}, properties={"bad": {"nested": 1}})
    with pytest.raises(InvalidMessageError):
        await sb.send_to_topic("t", "not a dict")  # type: ignore[arg-type]


async def test_a_message_object_keeps_its_fields(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s", filter_rule="kind = 'report'")
    sent = Message(
        message_type=MessageType.TASK,
        sender_id="orchestrator",
        content={"kind": "report", "quarter": "Q2"},
        priority=MessagePriority.HIGH,
        metadata={"trace": "abc"},
    )
    assert await sb.send_to_topic("t", sent) == sent.message_id
    [got] = await drain(sb, "t", "s")
    assert (got.message_id, got.message_type, got.sender_id, got.priority) == (
        sent.message_id,
        MessageType.TASK,
        "orchestrator",
        MessagePriority.HIGH,
    )
    assert got.metadata["trace"] == "abc" and got.content == sent.content


# ----------------------------------------------------------------------------- settlement


async def test_dead_letters_are_readable_and_resubmittable(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s", filter_rule="keep = TRUE")
    await sb.create_subscription("t", "other")
    await sb.send_to_topic("t", {"keep": True, "n": 1})
    await sb.send_to_topic("t", {"keep": False, "n": 2})
    [message] = await sb.receive_messages("t", "s", max_wait_time=5)
    await sb.dead_letter_message(message, reason="BadInput", error_description="n is odd")

    assert await drain(sb, "t", "s") == []
    [dead] = await sb.receive_dead_letters("t", "s")
    assert dead.content == {"keep": True, "n": 1}
    assert dead.metadata["aos.dead_letter.reason"] == "BadInput"
    assert servicebus_info(dead)["dead_letter_error_description"] == "n is odd"
    assert (await sb.get_subscription_runtime_properties("t", "s")).dead_letter_message_count == 1
    with pytest.raises(UnknownMessageError):
        await sb.complete_message(dead)  # a dead letter read from the DLQ holds no lock

    await sb.resubmit_dead_letter(dead)
    assert await sb.receive_dead_letters("t", "s") == []
    [again] = await drain(sb, "t", "s")
    assert again.content == {"keep": True, "n": 1}
    assert servicebus_info(again)["delivery_count"] == 1
    with pytest.raises(UnknownMessageError):
        await sb.resubmit_dead_letter(dead)  # already resubmitted
    # The other subscription was not affected by the dead-lettering or the resubmission.
    assert sorted(m.content["n"] for m in await drain(sb, "t", "other")) == [1, 2]

    for n in range(3):
        await sb.send_to_topic("t", {"keep": True, "n": 10 + n})
    for message in await sb.receive_messages("t", "s", max_message_count=3, max_wait_time=5):
        await sb.dead_letter_message(message)
    assert len(await sb.receive_dead_letters("t", "s", max_messages=2)) == 2
    assert await sb.resubmit_dead_letters("t", "s") == 3
    received = await drain(sb, "t", "s", complete=False)
    assert sorted(m.content["n"] for m in received) == [10, 11, 12]
    for message in received:
        await sb.dead_letter_message(message)
    assert await sb.purge_dead_letters("t", "s") == 3
    assert await sb.receive_dead_letters("t", "s") == []


async def test_abandon_redelivers_then_dead_letters(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s", max_delivery_count=3)
    await sb.send_to_topic("t", {"n": 1})
    counts = []
    for _ in range(3):
        [message] = await sb.receive_messages("t", "s", max_wait_time=5)
        counts.append(servicebus_info(message)["delivery_count"])
        await sb.abandon_message(message)
    assert counts == [1, 2, 3]
    assert await sb.receive_messages("t", "s", max_wait_time=0.1) == []
    [dead] = await sb.receive_dead_letters("t", "s")
    assert servicebus_info(dead)["dead_letter_reason"] == "MaxDeliveryCountExceeded"
    assert dead.metadata["aos.dead_letter.reason"] == "MaxDeliveryCountExceeded"


async def test_settling_twice_or_a_foreign_message_fails(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    await sb.send_to_topic("t", {"n": 1})
    [message] = await sb.receive_messages("t", "s", max_wait_time=5)
    await sb.complete_message(message)
    with pytest.raises(UnknownMessageError):
        await sb.complete_message(message)
    with pytest.raises(UnknownMessageError):
        await sb.abandon_message(Message(content={"n": 1}))


async def test_lock_expiry_redelivers_and_loses_the_old_lock(
    timed: ServiceBusManager, clock: ManualClock
) -> None:
    await timed.create_topic("t")
    await timed.create_subscription("t", "s", lock_duration=30, max_delivery_count=2)
    await timed.send_to_topic("t", {"n": 1})
    [first] = await timed.receive_messages("t", "s", max_wait_time=1)
    assert await timed.receive_messages("t", "s", max_wait_time=0) == []  # locked
    clock.advance(31)
    [second] = await timed.receive_messages("t", "s", max_wait_time=1)
    assert servicebus_info(second)["delivery_count"] == 2
    with pytest.raises(LockLostError):
        await timed.complete_message(first)
    clock.advance(10)
    until = await timed.renew_message_lock(second)
    assert until == datetime.fromtimestamp(clock.now() + 30, UTC)
    clock.advance(25)  # 35 s after the receive, 25 s after the renewal: still locked
    await timed.complete_message(second)
    assert await timed.receive_messages("t", "s", max_wait_time=0) == []

    await timed.send_to_topic("t", {"n": 2})
    for _ in range(2):
        await timed.receive_messages("t", "s", max_wait_time=1)
        clock.advance(31)  # the lock expires twice: the delivery count is used up
    assert await timed.receive_messages("t", "s", max_wait_time=0) == []
    [dead] = await timed.receive_dead_letters("t", "s")
    assert servicebus_info(dead)["dead_letter_reason"] == "MaxDeliveryCountExceeded"


async def test_expired_messages_are_never_delivered(
    timed: ServiceBusManager, clock: ManualClock
) -> None:
    await timed.create_topic("t", default_message_ttl_seconds=100)
    await timed.create_subscription("t", "dlq")
    await timed.create_subscription("t", "drop", dead_lettering_on_message_expiration=False)
    await timed.create_subscription("t", "short", default_message_ttl_seconds=10)
    await timed.send_to_topic("t", {"n": 1})
    await timed.send_to_topic("t", {"n": 2}, time_to_live=timedelta(seconds=5))
    clock.advance(6)
    assert [m.content["n"] for m in await drain(timed, "t", "dlq")] == [1]
    clock.advance(5)
    assert await drain(timed, "t", "short") == []
    clock.advance(100)
    assert await drain(timed, "t", "dlq") == []
    assert await drain(timed, "t", "drop") == []
    assert [
        (m.content["n"], servicebus_info(m)["dead_letter_reason"])
        for m in await timed.receive_dead_letters("t", "short")
    ] == [(1, "TTLExpiredException"), (2, "TTLExpiredException")]
    assert await timed.receive_dead_letters("t", "drop") == []


async def test_scheduled_messages_wait_for_their_time(
    timed: ServiceBusManager, clock: ManualClock
) -> None:
    await timed.create_topic("t")
    await timed.create_subscription("t", "s")
    at = datetime.fromtimestamp(clock.now() + 60, UTC)
    await timed.send_to_topic("t", {"n": 1}, scheduled_enqueue_time=at)
    assert await drain(timed, "t", "s") == []
    assert (await timed.get_subscription_runtime_properties("t", "s")).message_count == 1
    clock.advance(61)
    assert [m.content for m in await drain(timed, "t", "s")] == [{"n": 1}]
    with pytest.raises(InvalidMessageError):
        await timed.send_to_topic("t", {}, scheduled_enqueue_time=datetime(2030, 1, 1))


async def test_duplicate_detection(sb: ServiceBusManager) -> None:
    await sb.create_topic("dedup", requires_duplicate_detection=True)
    await sb.create_topic("plain")
    for topic in ("dedup", "plain"):
        await sb.create_subscription(topic, "s")
        await sb.send_to_topic(topic, {"n": 1}, message_id="same")
        await sb.send_to_topic(topic, {"n": 2}, message_id="same")
    assert [m.content["n"] for m in await drain(sb, "dedup", "s")] == [1]
    assert sorted(m.content["n"] for m in await drain(sb, "plain", "s")) == [1, 2]


# ----------------------------------------------------------------------------- topic size


async def test_topic_size_is_enforced(local_url: str) -> None:
    async with ServiceBusManager(connection_string=local_url) as sb:
        await sb.create_topic("t", max_size_in_mb=0.01)  # 10 485 bytes
        await sb.create_subscription("t", "a")
        await sb.create_subscription("t", "b")
        await sb.create_subscription("t", "none", filter_rule="1=0")
        payload = "x" * 900
        sent = 0
        with pytest.raises(TopicFullError):
            for n in range(100, 200):  # same-size messages
                await sb.send_to_topic("t", {"n": n, "payload": payload})
                sent += 1
        size = (await sb.get_topic_runtime_properties("t")).size_in_bytes
        assert 0 < size <= 10485 and 4 <= sent <= 6
        assert (await sb.get_subscription_runtime_properties("t", "a")).message_count == sent
        # Settling frees room; dead letters do not count.
        [m] = await sb.receive_messages("t", "a", max_wait_time=1)
        await sb.complete_message(m)
        [m] = await sb.receive_messages("t", "b", max_wait_time=1)
        await sb.dead_letter_message(m)
        await sb.send_to_topic("t", {"n": 200, "payload": payload})
        after = (await sb.get_topic_runtime_properties("t")).size_in_bytes
        assert after == size
        await drain(sb, "t", "a")
        await drain(sb, "t", "b")
        assert (await sb.get_topic_runtime_properties("t")).size_in_bytes == 0


async def test_topic_size_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'size.db'}"
    async with ServiceBusManager(connection_string=url) as sb:
        await sb.create_topic("t", max_size_in_mb=0.01)
        await sb.create_subscription("t", "s")
        for n in range(8):
            await sb.send_to_topic("t", {"n": n, "payload": "x" * 900})
        before = (await sb.get_topic_runtime_properties("t")).size_in_bytes
    async with ServiceBusManager(connection_string=url) as sb:
        # A new process knows the depth, not the sizes: estimated at the mean size seen.
        with pytest.raises(TopicFullError):
            for n in range(8, 20):
                await sb.send_to_topic("t", {"n": n, "payload": "x" * 900})
        size = (await sb.get_topic_runtime_properties("t")).size_in_bytes
        assert before <= size <= 10485
        assert (await sb.get_subscription_runtime_properties("t", "s")).message_count < 13


# ----------------------------------------------------------------------------- entities


async def test_topic_and_subscription_management(sb: ServiceBusManager) -> None:
    assert await sb.list_topics() == []
    created = await sb.create_topic("orders", max_size_in_mb=2048, default_message_ttl_seconds=60)
    assert created.name == "orders" and created.max_size_in_mb == 2048
    await sb.create_topic("a/b.c-d_e")
    assert [t.name for t in await sb.list_topics()] == ["a/b.c-d_e", "orders"]
    with pytest.raises(EntityExistsError):
        await sb.create_topic("orders")
    assert await sb.topic_exists("orders") and not await sb.topic_exists("missing")

    sub = await sb.create_subscription(
        "orders", "audit", max_delivery_count=4, lock_duration=timedelta(seconds=20)
    )
    assert (sub.max_delivery_count, sub.lock_duration) == (4, 20.0)
    assert (await sb.get_subscription("orders", "audit")) == sub
    with pytest.raises(EntityExistsError):
        await sb.create_subscription("orders", "audit")
    with pytest.raises(EntityNotFoundError):
        await sb.create_subscription("missing", "audit")
    with pytest.raises(FilterSyntaxError):
        await sb.create_subscription("orders", "broken", filter_rule="agent_id = ")
    assert not await sb.subscription_exists("orders", "broken")  # nothing was created
    await sb.create_subscription("orders", "billing")
    assert [s.name for s in await sb.list_subscriptions("orders")] == ["audit", "billing"]

    await sb.send_to_topic("orders", {"n": 1})
    await sb.delete_subscription("orders", "billing")
    assert [s.name for s in await sb.list_subscriptions("orders")] == ["audit"]
    with pytest.raises(EntityNotFoundError):
        await sb.receive_messages("orders", "billing", max_wait_time=0)
    await sb.create_subscription("orders", "billing")  # recreated: starts empty
    assert await drain(sb, "orders", "billing") == []

    await sb.delete_topic("orders")
    assert [t.name for t in await sb.list_topics()] == ["a/b.c-d_e"]
    with pytest.raises(EntityNotFoundError):
        await sb.send_to_topic("orders", {"n": 2})
    with pytest.raises(EntityNotFoundError):
        await sb.get_subscription("orders", "audit")
    await sb.create_topic("orders")
    await sb.create_subscription("orders", "audit")
    assert await drain(sb, "orders", "audit") == []  # the old messages went with the topic


async def test_invalid_arguments_are_refused() -> None:
    async with ServiceBusManager(connection_string="memory://") as sb:
        for name in ("", "-x", "x-", "a b", "x" * 261):
            with pytest.raises(ConfigurationError):
                await sb.create_topic(name)
        await sb.create_topic("t")
        for name in ("a/b", "x" * 51):
            with pytest.raises(ConfigurationError):
                await sb.create_subscription("t", name)
        with pytest.raises(ConfigurationError):
            await sb.create_subscription("t", "s", max_delivery_count=0)
        with pytest.raises(ConfigurationError):
            await sb.create_subscription("t", "s", lock_duration=0)
        with pytest.raises(ConfigurationError):
            await sb.create_topic("u", max_size_in_mb=-1)
        with pytest.raises(ConfigurationError):
            sb.receive_from_subscription("t", "s", max_wait_time=-1)
        with pytest.raises(ConfigurationError):
            await sb.receive_messages("t", "s", max_message_count=0)
    with pytest.raises(ConfigurationError):
        ServiceBusManager(connection_string=None)
    with pytest.raises(ConfigurationError):
        ServiceBusManager(connection_string="redis://localhost")


# ----------------------------------------------------------------------------- lifecycle


async def test_receiver_iteration_ends_as_documented(sb: ServiceBusManager) -> None:
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    for n in range(3):
        await sb.send_to_topic("t", {"n": n})
    seen = []
    async for message in sb.receive_from_subscription("t", "s", max_messages=2):
        seen.append(message.content["n"])
        await sb.complete_message(message)
    assert seen == [0, 1]
    async for message in sb.receive_from_subscription("t", "s", max_wait_time=0.2):
        seen.append(message.content["n"])
        await sb.complete_message(message)
    assert seen == [0, 1, 2]  # then 0.2 s without a message ended it

    receiver = sb.receive_from_subscription("t", "s")
    waiting = asyncio.create_task(receiver.__anext__())
    await asyncio.sleep(0.1)
    await sb.send_to_topic("t", {"n": 3})
    message = await asyncio.wait_for(waiting, 10)
    assert message.content == {"n": 3}
    await sb.complete_message(message)
    async with receiver:
        pass
    with pytest.raises(StopAsyncIteration):
        await receiver.__anext__()


async def test_lazy_start_close_and_context_manager(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lazy.db'}"
    sb = ServiceBusManager(connection_string=url)
    assert not (tmp_path / "lazy.db").exists()  # nothing happens before first use
    await sb.create_topic("t")
    assert (tmp_path / "lazy.db").exists() and sb.kind == "sqlite"
    await sb.create_subscription("t", "s")
    await sb.send_to_topic("t", {"n": 1})
    [held] = await sb.receive_messages("t", "s", max_wait_time=1)
    receiver = sb.receive_from_subscription("t", "s")
    waiting = asyncio.create_task(receiver.__anext__())
    await asyncio.sleep(0.05)
    await sb.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 10)
    with pytest.raises(BrokerClosedError):
        await sb.send_to_topic("t", {"n": 2})
    with pytest.raises(BrokerClosedError):
        await sb.start()

    async with ServiceBusManager(connection_string=url) as again:
        # Metadata is durable, and the unsettled message was given back at close.
        assert [t.name for t in await again.list_topics()] == ["t"]
        [message] = await again.receive_messages("t", "s", max_wait_time=1)
        assert message.content == held.content
        assert servicebus_info(message)["delivery_count"] == 2
        await again.complete_message(message)


async def test_two_managers_share_one_sqlite_file(tmp_path: Path, clock: ManualClock) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    async with ServiceBusManager(connection_string=url, clock=clock) as a:
        async with ServiceBusManager(connection_string=url, clock=clock) as b:
            await b.create_topic("t")
            await b.send_to_topic("t", {"x": 0})  # b now caches the topic without subscriptions
            await a.create_subscription("t", "s", filter_rule="x = 1")
            await b.send_to_topic("t", {"x": 1})  # b's cache is fresh: it does not see "s" yet
            assert await drain(a, "t", "s") == []
            clock.advance(1.0)  # metadata_refresh_seconds: b reloads the topic's metadata
            await b.send_to_topic("t", {"x": 1})
            await b.send_to_topic("t", {"x": 2})
            assert [m.content for m in await drain(a, "t", "s")] == [{"x": 1}]
            await b.add_rule("t", "s", "two", "x = 2")
            clock.advance(1.0)
            await a.send_to_topic("t", {"x": 2})
            assert [m.content for m in await drain(b, "t", "s")] == [{"x": 2}]


async def test_sharing_a_bus_engine() -> None:
    broker = MemoryBroker()
    sb = ServiceBusManager(broker=broker)
    assert isinstance(sb.backend, EngineServiceBus)
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    await sb.send_to_topic("t", {"n": 1})
    assert await broker.depth(subscription_queue("t", "s")) == 1
    await sb.close()
    assert await broker.depth(subscription_queue("t", "s")) == 1  # an injected engine stays open
    await broker.close()


async def test_filter_objects_round_trip_through_metadata(local_url: str) -> None:
    async with ServiceBusManager(connection_string=local_url) as sb:
        await sb.create_topic("t")
        await sb.create_subscription("t", "never", filter_rule=FalseFilter())
        await sb.create_subscription(
            "t", "corr", filter_rule=CorrelationFilter(subject="s", properties={"k": 2})
        )
        await sb.send_to_topic("t", {"k": 2}, subject="s")
        await sb.send_to_topic("t", {"k": 2}, subject="other")
        assert await drain(sb, "t", "never") == []
        assert len(await drain(sb, "t", "corr")) == 1
        [rule] = await sb.list_rules("t", "corr")
        assert rule.filter == CorrelationFilter(subject="s", properties={"k": 2})
        [never] = await sb.list_rules("t", "never")
        assert isinstance(never.filter, FalseFilter)
