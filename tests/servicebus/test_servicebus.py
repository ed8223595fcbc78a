"""ServiceBusManager on our engines (memory, SQLite, NATS): what only our engines do, or what
needs their clock. The spec 3.5 examples as written; lock expiry, TTL and scheduling on a
ManualClock; duplicate detection; the topic size ledger (dead letters do not count; a restart
estimates); lazy start; two managers on one SQLite file; sharing a bus's engine.

What every backend (Azure too) must do alike is in :mod:`tests.servicebus.contract`. NATS runs
against the session ``nats-server`` the fixtures start (never the system one), in a namespace
of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from AgentOperatingSystem.messaging.brokers.memory import MemoryBroker
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.errors import (
    BrokerClosedError,
    ConfigurationError,
    InvalidMessageError,
    LockLostError,
    TopicFullError,
)
from AgentOperatingSystem.messaging.servicebus_manager import (
    EngineServiceBus,
    ServiceBusManager,
    servicebus_info,
    subscription_queue,
)
from tests.support.engines import ENGINES, LOCAL_ENGINES, engine_params, engine_url
from tests.support.messages import drain_subscription as drain
from tests.support.waiting import eventually

from .spec_examples import (
    SPEC_EVENT,
    start_service_bus_manager_example,
    topic_and_subscription_management,
)


def _url_fixture(name: str, engines: Iterable[str]) -> Any:
    """The fixture ``name``: a fresh engine URL, once per engine of ``engines``."""

    @pytest.fixture(name=name, params=engine_params(engines))
    async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
        async with engine_url(request, request.param, tmp_path, name="servicebus") as url:
            yield url

    return url


any_url = _url_fixture("any_url", ENGINES)
local_url = _url_fixture("local_url", LOCAL_ENGINES)
spec_url = _url_fixture("spec_url", ("sqlite", "nats", "memory"))


@pytest.fixture
async def sb(any_url: str) -> AsyncIterator[ServiceBusManager]:
    manager = ServiceBusManager(connection_string=any_url, poll_interval=0.05)
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


# ----------------------------------------------------------------------------- spec 3.5


async def test_spec_3_5_examples_run_as_written(spec_url: str) -> None:
    # Initialize with connection string (the spec reads it from
    # AZURE_SERVICE_BUS_CONNECTION_STRING; here it is an engine URL)
    service_bus = ServiceBusManager(connection_string=spec_url)

    processed, loop_task = await start_service_bus_manager_example(service_bus)
    await eventually(lambda: len(processed) == 1)
    assert processed[0].content == SPEC_EVENT
    await eventually(lambda: _count(service_bus, "agent_events", "orchestrator_subscription", 0))

    await topic_and_subscription_management(service_bus)

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


# ----------------------------------------------------------------------------- time


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


# ----------------------------------------------------------------------------- lifecycle


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


async def test_metadata_refresh_seconds_set_on_the_backend_takes_effect(
    tmp_path: Path, clock: ManualClock
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    async with ServiceBusManager(connection_string=url, clock=clock) as a:
        async with ServiceBusManager(connection_string=url, clock=clock) as b:
            backend = b.backend
            assert isinstance(backend, EngineServiceBus)
            backend.metadata_refresh_seconds = 5.0
            assert backend.metadata_refresh_seconds == 5.0
            await b.create_topic("t")
            await b.send_to_topic("t", {"x": 0})  # b caches the topic without subscriptions
            await a.create_subscription("t", "s")
            clock.advance(1.0)  # the default refresh would reload here; 5 s does not
            await b.send_to_topic("t", {"x": 1})
            assert await drain(a, "t", "s") == []
            clock.advance(4.0)
            await b.send_to_topic("t", {"x": 2})
            assert [m.content for m in await drain(a, "t", "s")] == [{"x": 2}]


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


async def test_a_manager_needs_a_known_connection_string() -> None:
    with pytest.raises(ConfigurationError):
        ServiceBusManager(connection_string=None)
    with pytest.raises(ConfigurationError):
        ServiceBusManager(connection_string="redis://localhost")
