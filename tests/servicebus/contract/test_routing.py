"""Rules decide what reaches a subscription: SQL and correlation filters, ANY rule matching,
the user and system properties a filter sees, and what a message keeps on the way."""

from __future__ import annotations

from typing import Any

import pytest

from AgentOperatingSystem.messaging.errors import (
    EntityExistsError,
    EntityNotFoundError,
    InvalidMessageError,
)
from AgentOperatingSystem.messaging.servicebus.sqlfilter import (
    CorrelationFilter,
    FalseFilter,
    SqlFilter,
    TrueFilter,
)
from AgentOperatingSystem.messaging.servicebus_manager import (
    DEFAULT_RULE_NAME,
    ServiceBusManager,
    application_properties,
    servicebus_info,
)
from AgentOperatingSystem.messaging.types import Message, MessagePriority, MessageType
from tests.support.messages import drain_subscription as drain

pytestmark = pytest.mark.timeout(90)


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


async def test_filter_objects_round_trip(sb: ServiceBusManager) -> None:
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
