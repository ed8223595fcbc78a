"""ServiceBusManager on Azure Service Bus, against a fake namespace at the network boundary
(:mod:`tests.servicebus.azure_fake`: the real SDK between our code and two fake edges).

These are the Azure-specific cases: what goes over the wire (Atom XML, AMQP properties), the
SDK's errors and their translation, settling through the receiving manager. What every
backend must do alike is in :mod:`tests.servicebus.contract`, which runs on this fake too.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, AsyncIterator

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
)
from azure.servicebus import exceptions as sb_errors

from AgentOperatingSystem.messaging.errors import (
    BrokerClosedError,
    BrokerUnavailableError,
    ConfigurationError,
    EntityExistsError,
    EntityNotFoundError,
    LockLostError,
    MessageTooLargeError,
    PermissionDeniedError,
    ServiceBusError,
    TopicFullError,
    UnknownMessageError,
)
from AgentOperatingSystem.messaging.servicebus.azure import (
    AzureServiceBus,
    UnparsedSqlFilter,
    translate_azure_error,
)
from AgentOperatingSystem.messaging.servicebus.sqlfilter import (
    CorrelationFilter,
    FalseFilter,
    Filter,
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
from tests.support.waiting import eventually

from .azure_fake import (
    CONNECTION_STRING,
    SB,
    XSI,
    Azure,
    FakeNamespace,
    FakeResponse,
    error_body,
    make_manager,
)
from .spec_examples import (
    SPEC_EVENT,
    start_service_bus_manager_example,
    topic_and_subscription_management,
)


@pytest.fixture
async def azure() -> AsyncIterator[Azure]:
    ns = FakeNamespace()
    manager, client, transport = make_manager(ns)
    yield Azure(ns, client, transport, manager)
    await manager.close()


# ============================================================================ tests


def test_an_azure_connection_string_selects_the_sdk_backend() -> None:
    service_bus = ServiceBusManager(connection_string=CONNECTION_STRING)
    assert service_bus.kind == "azure" and isinstance(service_bus.backend, AzureServiceBus)
    assert ServiceBusManager(connection_string="memory://").kind == "memory"


async def test_spec_3_5_examples_on_azure(azure: Azure) -> None:
    service_bus = azure.manager
    processed, task = await start_service_bus_manager_example(service_bus)
    await eventually(
        lambda: (
            processed
            and not azure.ns.subscriptions[("agent_events", "orchestrator_subscription")].active
        ),
        10,
    )
    [got] = processed
    assert got.content == SPEC_EVENT
    assert application_properties(got) == got.content  # bytes keys decoded back to str
    assert servicebus_info(got)["delivery_count"] == 1
    [sent] = azure.client.senders[0].sent
    assert sent.application_properties == SPEC_EVENT
    assert sent.content_type == "application/json"
    assert json.loads(b"".join(sent.body)) == got.content

    await topic_and_subscription_management(service_bus)
    topic_xml = azure.ns.topics["agent_tasks"]
    assert topic_xml.findtext(f"{{{SB}}}MaxSizeInMegabytes") == "1024"
    assert topic_xml.findtext(f"{{{SB}}}DefaultMessageTimeToLive") == "PT1H"
    sub_rules = azure.ns.subscriptions[("agent_tasks", "ceo_agent_tasks")].rules
    assert list(sub_rules) == [DEFAULT_RULE_NAME]  # the TrueFilter $Default was replaced
    flt = azure.rule_filter("agent_tasks", "ceo_agent_tasks", DEFAULT_RULE_NAME)
    assert flt.get(f"{{{XSI}}}type") == "SqlFilter"
    assert flt.findtext(f"{{{SB}}}SqlExpression") == "agent_id = 'ceo_agent'"
    assert ("DELETE", "/agent_tasks/subscriptions/ceo_agent_tasks/rules/$Default") in azure.ns.http
    topic = await service_bus.get_topic("agent_tasks")
    assert (topic.max_size_in_mb, topic.default_message_ttl_seconds) == (1024, 3600)

    await service_bus.send_to_topic(topic_name="agent_tasks", message={"agent_id": "cfo_agent"})
    await service_bus.send_to_topic(topic_name="agent_tasks", message={"agent_id": "ceo_agent"})
    assert [m.content for m in await drain(service_bus, "agent_tasks", "ceo_agent_tasks")] == [
        {"agent_id": "ceo_agent"}
    ]

    assert not task.done()
    await service_bus.close()  # ends the receive loop; closes receivers, senders and clients
    await asyncio.wait_for(task, 10)
    assert azure.client.closed and azure.transport.closed
    assert all(r.closed for r in azure.client.receivers)
    assert all(s.closed for s in azure.client.senders)


async def test_management_round_trips_through_the_sdk(azure: Azure) -> None:
    sb = azure.manager
    created = await sb.create_topic(
        "orders",
        max_size_in_mb=2048,
        requires_duplicate_detection=True,
        duplicate_detection_window_seconds=120,
    )
    assert created.max_size_in_mb == 2048 and created.requires_duplicate_detection
    assert created.duplicate_detection_window_seconds == 120
    await sb.create_topic("audit")
    assert [t.name for t in await sb.list_topics()] == ["audit", "orders"]
    sub = await sb.create_subscription(
        "orders",
        "billing",
        max_delivery_count=3,
        lock_duration=30,
        dead_lettering_on_message_expiration=False,
        default_message_ttl_seconds=600,
    )
    assert (sub.max_delivery_count, sub.lock_duration, sub.default_message_ttl_seconds) == (
        3,
        30,
        600,
    )
    assert not sub.dead_lettering_on_message_expiration
    assert await sb.get_subscription("orders", "billing") == sub
    await sb.create_subscription("orders", "all")
    assert [s.name for s in await sb.list_subscriptions("orders")] == ["all", "billing"]
    assert [r.name for r in await sb.list_rules("orders", "all")] == [DEFAULT_RULE_NAME]
    assert isinstance((await sb.list_rules("orders", "all"))[0].filter, TrueFilter)

    await sb.add_rule(
        "orders",
        "billing",
        "corr",
        CorrelationFilter(
            correlation_id="c-1", subject="invoice", properties={"tier": 2, "region": "eu"}
        ),
    )
    await sb.add_rule("orders", "billing", "never", FalseFilter())
    await sb.add_rule("orders", "billing", "sql", "amount > 100")
    rules = {r.name: r.filter for r in await sb.list_rules("orders", "billing")}
    assert rules["corr"] == CorrelationFilter(
        correlation_id="c-1", subject="invoice", properties={"tier": 2, "region": "eu"}
    )
    assert isinstance(rules["never"], FalseFilter) and isinstance(
        rules[DEFAULT_RULE_NAME], TrueFilter
    )
    assert rules["sql"] == SqlFilter("amount > 100")
    corr = azure.rule_filter("orders", "billing", "corr")
    assert corr.get(f"{{{XSI}}}type") == "CorrelationFilter"
    assert corr.findtext(f"{{{SB}}}Label") == "invoice"
    await sb.remove_rule("orders", "billing", "never")
    assert "never" not in azure.ns.subscriptions[("orders", "billing")].rules

    runtime = await sb.get_subscription_runtime_properties("orders", "all")
    assert (runtime.message_count, runtime.dead_letter_message_count) == (0, 0)
    assert (await sb.get_topic_runtime_properties("orders")).subscription_count == 2

    await sb.delete_subscription("orders", "all")
    assert [s.name for s in await sb.list_subscriptions("orders")] == ["billing"]
    await sb.delete_topic("orders")
    assert not await sb.topic_exists("orders")
    assert await sb.topic_exists("audit")
    with pytest.raises(ConfigurationError):
        await sb.create_topic("fractional", max_size_in_mb=1.5)


async def test_sdk_errors_become_ours(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("t")
    with pytest.raises(EntityExistsError) as exists:
        await sb.create_topic("t")
    assert isinstance(exists.value.__cause__, HttpResponseError)
    assert exists.value.__cause__.status_code == 409
    with pytest.raises(EntityNotFoundError):
        await sb.get_topic("missing")  # the SDK's own "empty feed" check
    with pytest.raises(EntityNotFoundError):
        await sb.get_subscription("t", "missing")  # a 404 from the service
    with pytest.raises(EntityNotFoundError):
        await sb.create_subscription("missing", "s")
    await sb.create_subscription("t", "s")
    with pytest.raises(EntityExistsError):
        await sb.create_subscription("t", "s")
    with pytest.raises(EntityNotFoundError):
        await sb.remove_rule("t", "s", "nope")
    with pytest.raises(EntityNotFoundError) as missing:
        await sb.send_to_topic("missing", {"a": 1})
    assert isinstance(missing.value.__cause__, sb_errors.MessagingEntityNotFoundError)
    azure.ns.fail_next_send = sb_errors.ServiceBusQuotaExceededError(message="quota exceeded")
    with pytest.raises(TopicFullError):
        await sb.send_to_topic("t", {"a": 1})
    azure.ns.fail_http = [401]
    with pytest.raises(PermissionDeniedError):
        await sb.list_topics()
    azure.ns.fail_http = [503]  # the SDK's retry policy absorbs one failure
    assert [t.name for t in await sb.list_topics()] == ["t"]
    azure.ns.fail_http = [503] * 10
    with pytest.raises(BrokerUnavailableError):
        await sb.list_topics()
    azure.ns.fail_http = []

    # A filter that fails to apply leaves no half-made subscription behind.
    original = azure.transport._rule

    def broken(*args: Any) -> FakeResponse:
        azure.transport._rule = original  # type: ignore[method-assign]
        return FakeResponse(args[0], 400, error_body(400, "bad filter"))

    azure.transport._rule = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(ServiceBusError):
        await sb.create_subscription("t", "filtered", filter_rule="a = 1")
    assert ("t", "filtered") not in azure.ns.subscriptions


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ResourceExistsError("exists"), EntityExistsError),
        (ClientAuthenticationError("no"), PermissionDeniedError),
        (sb_errors.ServiceBusAuthorizationError(message="no"), PermissionDeniedError),
        (sb_errors.MessageLockLostError(message="lost"), LockLostError),
        (sb_errors.MessageAlreadySettled(), UnknownMessageError),
        (sb_errors.MessageSizeExceededError(message="big"), MessageTooLargeError),
        (sb_errors.ServiceBusConnectionError(message="down"), BrokerUnavailableError),
        (sb_errors.OperationTimeoutError(message="slow"), BrokerUnavailableError),
        (ServiceRequestError("dns"), BrokerUnavailableError),
        (sb_errors.MessagingEntityDisabledError(message="off"), ServiceBusError),
    ],
)
def test_error_translation_table(error: BaseException, expected: type[Exception]) -> None:
    assert isinstance(translate_azure_error(error, "op"), expected)


async def test_peek_lock_settlement_and_dead_letters(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("t")
    await sb.create_subscription("t", "s", max_delivery_count=3)
    await sb.create_subscription("t", "other", filter_rule="kind = 'other'")
    await sb.send_to_topic(
        "t",
        Message(
            message_type=MessageType.TASK,
            sender_id="orchestrator",
            content={"kind": "work", "n": 1},
            priority=MessagePriority.HIGH,
            metadata={"trace": "t-1"},
        ),
        properties={"extra": 7},
        correlation_id="corr",
        subject="job",
        time_to_live=timedelta(minutes=5),
    )
    counts = []
    for _ in range(2):
        [message] = await sb.receive_messages("t", "s", max_wait_time=1)
        counts.append(servicebus_info(message)["delivery_count"])
        await sb.abandon_message(message)
    [message] = await sb.receive_messages("t", "s", max_wait_time=1)
    counts.append(servicebus_info(message)["delivery_count"])
    assert counts == [1, 2, 3]
    assert (message.message_type, message.sender_id, message.priority) == (
        MessageType.TASK,
        "orchestrator",
        MessagePriority.HIGH,
    )
    assert message.metadata["trace"] == "t-1" and message.correlation_id == "corr"
    assert application_properties(message) == {"kind": "work", "n": 1, "extra": 7}
    assert servicebus_info(message)["system"]["subject"] == "job"
    assert message.ttl == 300
    until = await sb.renew_message_lock(message)
    assert until > datetime.now(UTC)

    await sb.dead_letter_message(message, reason="BadInput", error_description="n is odd")
    with pytest.raises(UnknownMessageError):
        await sb.complete_message(message)  # settled already
    [dead] = await sb.receive_dead_letters("t", "s")
    assert dead.metadata["aos.dead_letter.reason"] == "BadInput"
    assert servicebus_info(dead)["dead_letter_error_description"] == "n is odd"
    assert "DeadLetterReason" not in application_properties(dead)
    assert (await sb.get_subscription_runtime_properties("t", "s")).dead_letter_message_count == 1

    await sb.resubmit_dead_letter(dead)
    assert await sb.receive_dead_letters("t", "s") == []
    [again] = await drain(sb, "t", "s")
    assert again.content == {"kind": "work", "n": 1} and application_properties(again)["extra"] == 7
    # On Azure a resubmitted copy goes through the topic: only matching subscriptions get it.
    assert await drain(sb, "t", "other") == []

    await sb.send_to_topic("t", {"n": 2})
    for _ in range(3):
        [message] = await sb.receive_messages("t", "s", max_wait_time=1)
        await sb.abandon_message(message)
    [dead] = await sb.receive_dead_letters("t", "s")
    assert servicebus_info(dead)["dead_letter_reason"] == "MaxDeliveryCountExceeded"
    assert await sb.purge_dead_letters("t", "s") == 1
    assert await sb.receive_dead_letters("t", "s") == []


async def test_settling_requires_the_receiving_manager_and_a_live_lock(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    await sb.send_to_topic("t", {"n": 1})
    [message] = await sb.receive_messages("t", "s", max_wait_time=1)
    copy = message.copy(
        metadata={
            **message.metadata,
            "aos.servicebus": {
                **message.metadata["aos.servicebus"],
                "lock_token": str(uuid.uuid4()),
            },
        }
    )
    with pytest.raises(UnknownMessageError):
        await sb.complete_message(copy)
    with pytest.raises(UnknownMessageError):
        await sb.complete_message(Message(content={"n": 1}))
    for stored in azure.ns.subscriptions[("t", "s")].active:
        stored.lock_token = uuid.uuid4()  # the service moved the lock on (it expired)
    with pytest.raises(LockLostError) as lost:
        await sb.complete_message(message)
    assert isinstance(lost.value.__cause__, sb_errors.MessageLockLostError)


async def test_filters_azure_keeps_that_we_cannot_parse_are_kept_as_text(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("t")
    await sb.create_subscription("t", "s")
    rule = azure.ns.subscriptions[("t", "s")].rules[DEFAULT_RULE_NAME]
    flt = rule.find(f"{{{SB}}}Filter")
    assert flt is not None
    flt.set(f"{{{XSI}}}type", "SqlFilter")
    expr = flt.find(f"{{{SB}}}SqlExpression")
    assert expr is not None
    expr.text = "amount > @limit"
    [listed] = await sb.list_rules("t", "s")
    assert listed.filter == UnparsedSqlFilter("amount > @limit")
    assert listed.filter.to_sql() == "amount > @limit"


async def test_a_closed_azure_manager_refuses_work(azure: Azure) -> None:
    sb = azure.manager
    await sb.create_topic("t")
    await sb.close()
    with pytest.raises(BrokerClosedError):
        await sb.send_to_topic("t", {"n": 1})
    assert azure.client.closed


def test_filters_map_to_sdk_rule_filters() -> None:
    from azure.servicebus.management import (
        CorrelationRuleFilter,
        FalseRuleFilter,
        SqlRuleFilter,
        TrueRuleFilter,
    )

    from AgentOperatingSystem.messaging.servicebus.azure.filters import (
        from_azure_filter,
        to_azure_filter,
    )

    cases: list[tuple[Filter, type[Any]]] = [
        (TrueFilter(), TrueRuleFilter),
        (FalseFilter(), FalseRuleFilter),
        (SqlFilter("a = 1"), SqlRuleFilter),
        (CorrelationFilter(to="x", properties={"k": "v"}), CorrelationRuleFilter),
    ]
    for ours, theirs in cases:
        converted = to_azure_filter(ours)
        assert type(converted) is theirs
        assert from_azure_filter(converted) == ours
