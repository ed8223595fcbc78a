"""NetworkProtocol between nodes in one process: sending, registry, discovery, peers,
connections, the pool, retries, circuits, failed sends (dead letters and resubmission),
authentication and bad input."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from AgentOperatingSystem.config.forwarding import Forwarded
from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.config.network import (
    NetworkConfig,
    NetworkSettings,
    PoolConfig,
    RetryConfig,
)
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.codec.envelope import encode
from AgentOperatingSystem.messaging.errors import (
    AgentUnreachableError,
    CircuitOpenError,
    ConfigurationError,
    MessageTooLargeError,
    NetworkError,
    RemoteError,
    UnknownAgentError,
)
from AgentOperatingSystem.messaging.network.auth import (
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    sign_request,
    signature_headers,
    verify_request,
)
from AgentOperatingSystem.messaging.network.node import NetworkProtocol
from AgentOperatingSystem.messaging.network.outbox import outbox_queue
from AgentOperatingSystem.messaging.network.pool import ConnectionPool
from AgentOperatingSystem.messaging.network.wire import normalize_address
from AgentOperatingSystem.messaging.types import Message, MessagePriority, MessageType
from AgentOperatingSystem.reliability.circuit_breaker import CircuitState
from AgentOperatingSystem.storage.manager import StorageManager
from tests.network.nodes import SECRET, Pair, cfg, inbox, memory_bus, next_message
from tests.support.ports import free_port


class RecordingClock(ManualClock):
    """A ManualClock that tells when something sleeps on it."""

    def __init__(self) -> None:
        super().__init__(start=time.time())
        self.sleeps: list[float] = []
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        await super().sleep(seconds)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """Two nodes sharing one registry (as processes sharing a SQLite store would)."""
    storage = StorageManager("memory://")
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(cfg(node_id="A"), bus_a, storage=storage)
        b = NetworkProtocol(cfg(node_id="B"), bus_b, storage=storage)
        async with a, b:
            yield Pair(a, b, bus_a, bus_b)
    await storage.close()


# ---------------------------------------------------------------------------- config


def test_config_validation() -> None:
    with pytest.raises(ConfigurationError):
        NetworkConfig(port=70000)
    with pytest.raises(ConfigurationError):
        NetworkConfig(auth_secret="short")
    with pytest.raises(ConfigurationError):
        NetworkConfig(public_url="ftp://x")
    with pytest.raises(ConfigurationError):
        NetworkConfig(retry_backoff_multiplier=0.5)
    with pytest.raises(ConfigurationError):
        NetworkConfig(max_connections=0)
    with pytest.raises(ConfigurationError):
        NetworkConfig(previous_auth_secrets="x" * 20)
    c = NetworkConfig(
        auth_secret=SECRET,
        previous_auth_secrets=["old-secret-0123456789"],
        public_url="http://Node-1:8080/",
        retry_initial_delay=0.5,
        retry_backoff_multiplier=3,
        retry_max_delay=2.0,
    )
    assert c.public_url == "http://Node-1:8080"
    assert c.verification_secrets == (SECRET.encode(), b"old-secret-0123456789")
    assert [c.retry_delay(n) for n in (1, 2, 3)] == [0.5, 1.5, 2.0]
    assert c.max_attempts == 4


def test_auth_secret_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AOS_NETWORK_SECRET", SECRET)
    assert NetworkConfig().secret == SECRET.encode()
    monkeypatch.delenv("AOS_NETWORK_SECRET")
    assert NetworkConfig().secret is None


def test_config_groups_take_and_read_every_flat_setting() -> None:
    c = NetworkConfig(
        port=0,
        max_retries=5,
        retry_jitter=0.5,
        circuit_window_seconds=9.0,
        batch_after=2,
        registry_cache_seconds=0.0,
        outbox_poll_interval=0.5,
        a2a_max_tasks=7,
    )
    assert c.server.port == 0 and c.port == 0
    assert c.retry.max_retries == 5 and c.retry.jitter == 0.5 and c.retry_jitter == 0.5
    assert c.circuit.window_seconds == 9.0 and c.circuit_window_seconds == 9.0
    assert c.batching.batch_after == 2 and c.batch_after == 2
    assert c.registry.cache_seconds == 0.0 and c.registry_cache_seconds == 0.0
    assert c.outbox.poll_interval == 0.5 and c.a2a.max_tasks == 7 and c.a2a_max_tasks == 7
    c.max_retries = 6  # a flat name also writes its group's setting
    assert c.retry.max_retries == 6 and c.max_attempts == 7
    # every flat keyword is a setting of one group, taken and read by its flat name
    defaults = NetworkConfig()
    assert set(NetworkSettings.__annotations__) == {
        name for name in dir(NetworkConfig) if isinstance(vars(NetworkConfig).get(name), Forwarded)
    }
    for name in NetworkSettings.__annotations__:
        value = getattr(defaults, name)
        assert NetworkConfig(**{name: value}) == defaults, name
    with pytest.raises(TypeError, match="prot"):
        NetworkConfig(prot=80)  # type: ignore[call-arg]
    # a whole group, with flat keywords on top; the group given is not changed
    given = RetryConfig(max_retries=1, initial_delay=0.5)
    c = NetworkConfig(retry=given, max_retries=2)
    assert (c.max_retries, c.retry_initial_delay, given.max_retries) == (2, 0.5, 1)
    with pytest.raises(ConfigurationError, match="RetryConfig"):
        NetworkConfig(retry=PoolConfig())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="retry_jitter"):
        RetryConfig(jitter=2.0)  # each group checks its own settings
    # replace(): a copy of every group, validated
    d = c.replace(max_connections=3)
    assert d.max_connections == 3 and c.max_connections == 100
    assert d.retry == c.retry and d.retry is not c.retry
    with pytest.raises(ConfigurationError):
        c.replace(max_connections=0)


@pytest.mark.parametrize(
    ("address", "normal"),
    [
        ("HTTP://Ceo-Service:80/", "http://ceo-service"),
        ("https://h:443/base/", "https://h/base"),
        ("http://h:8080", "http://h:8080"),
    ],
)
def test_normalize_address(address: str, normal: str) -> None:
    assert normalize_address(address) == normal


def test_an_address_without_a_scheme_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        normalize_address("ceo-service:8080")


def test_signatures() -> None:
    key = SECRET.encode()
    now = 1_800_000_000.0
    headers = signature_headers(key, "POST", "/aos/v1/messages", b"body", now)
    ts, sig = headers[HEADER_TIMESTAMP], headers[HEADER_SIGNATURE]
    assert sig.startswith("v1=") and len(sig) == 3 + 64

    def ok(**kw: Any) -> bool:
        args: dict[str, Any] = {
            "secrets": [key],
            "method": "POST",
            "path": "/aos/v1/messages",
            "timestamp": ts,
            "signature": sig,
            "body": b"body",
            "now": now,
            "max_age": 300,
        }
        args.update(kw)
        return verify_request(**args)

    assert ok()
    assert ok(secrets=[b"another-secret-0123456789", key])  # rotation: an older key still works
    assert not ok(body=b"bodY")
    assert not ok(path="/aos/v1/other")
    assert not ok(method="PUT")
    assert not ok(secrets=[b"another-secret-0123456789"])
    assert not ok(now=now + 301)
    assert not ok(timestamp=None)
    assert not ok(signature=None)
    assert not ok(timestamp="nan")
    assert sign_request(key, "post", "/p", ts, b"") == sign_request(key, "POST", "/p", ts, b"")


# ---------------------------------------------------------------------------- sending


async def test_send_message_reaches_the_agent_on_the_other_node(pair: Pair) -> None:
    q = await inbox(pair.bus_b, "remote_agent")
    await pair.b.register_agent("remote_agent", capabilities=["financial_analysis"])

    receipt = await pair.a.send_message("local_agent", "remote_agent", {"task": "report"})
    assert receipt.address == pair.b.url and not receipt.local and not receipt.duplicate
    msg = await next_message(q)
    assert msg.message_id == receipt.message_id
    assert msg.content == {"task": "report"}
    assert msg.sender_id == "local_agent" and msg.recipient_id == "remote_agent"
    assert msg.message_type is MessageType.NOTIFICATION

    original = Message(
        message_type=MessageType.TASK,
        sender_id="someone",
        content={"n": 1},
        priority=MessagePriority.HIGH,
        correlation_id="corr-1",
        metadata={"k": "v"},
    )
    receipt = await pair.a.send_message("local_agent", "remote_agent", original)
    msg = await next_message(q)
    assert msg.message_id == original.message_id == receipt.message_id
    assert msg.message_type is MessageType.TASK and msg.priority is MessagePriority.HIGH
    assert msg.correlation_id == "corr-1" and msg.metadata == {"k": "v"}
    assert msg.sender_id == "local_agent"
    assert msg.timestamp == original.timestamp
    assert pair.a.pool.requests_sent == 2


async def test_an_agent_on_the_same_node_gets_the_message_through_the_local_bus(
    pair: Pair,
) -> None:
    q = await inbox(pair.bus_a, "neighbour")
    await pair.a.register_agent("neighbour")
    receipt = await pair.a.send_message("me", "neighbour", {"hi": 1})
    assert receipt.local and receipt.address is None
    assert (await next_message(q)).content == {"hi": 1}
    assert pair.a.pool.requests_sent == 0


async def test_unknown_agents_raise_unknown_agent_error(pair: Pair) -> None:
    with pytest.raises(UnknownAgentError, match="not registered"):
        await pair.a.send_message("me", "nobody", {"x": 1})
    assert await pair.a.get_failed_messages("me") == []
    with pytest.raises(UnknownAgentError):
        await pair.a.connect("nobody")


async def test_a_node_that_does_not_host_the_agent_answers_404(tmp_path: Path) -> None:
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(cfg(), bus_a)  # separate registries
        b = NetworkProtocol(cfg(), bus_b)
        async with a, b:
            await a.register_agent("ghost", b.url, ["x"])
            with pytest.raises(UnknownAgentError, match="does not host"):
                await a.send_message("me", "ghost", {"x": 1})
            (failed,) = await a.get_failed_messages("me")
            assert failed.metadata["aos.dead_letter.reason"] == "rejected"
            with pytest.raises(UnknownAgentError):
                await a.connect("ghost", b.url)


async def test_sender_side_limits_raise_before_anything_is_sent(pair: Pair) -> None:
    await pair.b.register_agent("remote_agent")
    with pytest.raises(MessageTooLargeError):
        await pair.a.send_message("me", "remote_agent", {"blob": "x" * 2_000_000})
    assert pair.a.pool.requests_sent == 0
    assert await pair.a.get_failed_messages("me") == []


# ---------------------------------------------------------------------------- registry


async def test_discover_agents_needs_every_capability(pair: Pair) -> None:
    await pair.a.register_agent(
        "ceo_agent", "http://ceo-service:8080", ["strategy", "decision_making"]
    )
    await pair.b.register_agent("cfo_agent", capabilities=["financial_analysis", "strategy"])
    await pair.b.register_agent("analyst", capabilities=["financial_analysis"])

    found = await pair.a.discover_agents(capabilities=["financial_analysis"])
    assert [a.agent_id for a in found] == ["analyst", "cfo_agent"]
    both = await pair.a.discover_agents(capabilities=["financial_analysis", "strategy"])
    assert [a.agent_id for a in both] == ["cfo_agent"]
    assert [a.agent_id for a in await pair.a.discover_agents()] == [
        "analyst",
        "ceo_agent",
        "cfo_agent",
    ]
    (ceo,) = await pair.b.discover_agents(["decision_making"])
    assert ceo.address == "http://ceo-service:8080" and ceo.node_id is None
    cfo = next(a for a in found if a.agent_id == "cfo_agent")
    assert cfo.address == pair.b.url and cfo.node_id == "B"
    assert [a.agent_id for a in await pair.b.hosted_agents()] == ["analyst", "cfo_agent"]
    assert await pair.a.unregister_agent("analyst")
    assert not await pair.a.unregister_agent("analyst")
    with pytest.raises(ConfigurationError):
        await pair.a.register_agent("x", "not a url", [])
    with pytest.raises(ConfigurationError):
        await pair.a.register_agent("x", None, "strategy")


async def test_the_registry_is_shared_through_a_sqlite_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    one = NetworkProtocol(cfg(storage_url=url))
    two = NetworkProtocol(cfg(storage_url=url))
    try:
        await one.register_agent("x", "http://h1:9000", ["a", "b"])
        (seen,) = await two.discover_agents(["b"])
        assert (seen.agent_id, seen.address, seen.capabilities) == (
            "x",
            "http://h1:9000",
            ("a", "b"),
        )
    finally:
        await one.stop()
        await two.stop()


async def test_an_agent_registered_before_start_gets_the_node_address(pair: Pair) -> None:
    async with memory_bus() as bus:
        node = NetworkProtocol(cfg(), bus, storage=pair.a.storage)
        info = await node.register_agent("early", capabilities=["c"])
        assert info.address is None
        async with node:
            (entry,) = await pair.a.discover_agents(["c"])
            assert entry.address == node.url
            q = await inbox(bus, "early")
            await pair.a.send_message("me", "early", {"v": 1})
            assert (await next_message(q)).content == {"v": 1}


async def test_add_peer_imports_agents_from_their_cards() -> None:
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(cfg(), bus_a)
        b = NetworkProtocol(cfg(), bus_b)
        async with a, b:
            await b.register_agent(
                "cfo_agent", capabilities=["financial_analysis"], metadata={"name": "CFO"}
            )
            await b.register_agent("ops", capabilities=[])
            assert await a.discover_agents() == []
            imported = await a.add_peer(b.url + "/")
            assert sorted(i.agent_id for i in imported) == ["cfo_agent", "ops"]
            (cfo,) = await a.discover_agents(["financial_analysis"])
            assert cfo.address == b.url and cfo.node_id == b.node_id
            assert cfo.metadata["name"] == "CFO"
            assert cfo.metadata["card_url"].endswith(
                "/agents/cfo_agent/.well-known/agent-card.json"
            )
            q = await inbox(bus_b, "cfo_agent")
            await a.send_message("me", "cfo_agent", {"q": 1})
            assert (await next_message(q)).content == {"q": 1}


async def test_add_peer_reads_the_index_when_the_peer_serves_no_cards() -> None:
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(cfg(), bus_a)
        b = NetworkProtocol(cfg(a2a_enabled=False), bus_b)
        async with a, b:
            await b.register_agent("quiet", capabilities=["c1", "c2"])
            (info,) = await a.add_peer(b.url)
            assert info.capabilities == ("c1", "c2") and "card_url" not in info.metadata


async def test_add_peer_needs_the_shared_secret() -> None:
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(cfg(auth_secret="a-different-secret-123456"), bus_a)
        b = NetworkProtocol(cfg(), bus_b)
        async with a, b:
            with pytest.raises(RemoteError) as info:
                await a.add_peer(b.url)
            assert info.value.status == 401


# ---------------------------------------------------------------------------- connections


async def test_connect_send_and_close(pair: Pair) -> None:
    q = await inbox(pair.bus_b, "remote_agent")
    await pair.b.register_agent("remote_agent")
    connection = await pair.a.connect(agent_id="remote_agent", address=pair.b.url)
    r1 = await connection.send({"n": 1})
    r2 = await connection.send(Message(message_type=MessageType.COMMAND, content={"n": 2}))
    assert {(await next_message(q)).content["n"], (await next_message(q)).content["n"]} == {1, 2}
    assert r1.recipient_id == r2.recipient_id == "remote_agent"
    await connection.close()
    with pytest.raises(NetworkError, match="closed"):
        await connection.send({"n": 3})
    # default address: the registered one
    async with await pair.a.connect("remote_agent") as conn:
        await conn.send_message({"n": 4}, sender_id="x")
    got = await next_message(q)
    assert got.content == {"n": 4} and got.sender_id == "x"
    with pytest.raises(UnknownAgentError):
        await pair.a.connect("nobody", pair.b.url)


async def test_connect_to_a_node_that_is_down_is_unreachable() -> None:
    port = free_port()
    node = NetworkProtocol(cfg())
    try:
        with pytest.raises(AgentUnreachableError, match="did not answer after 2"):
            await node.connect("x", f"http://127.0.0.1:{port}")
    finally:
        await node.stop()


async def test_connection_pool_spec_example_and_keep_alive_reuse(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AOS_NETWORK_SECRET", SECRET)
    q = await inbox(pair.bus_b, "remote_agent")
    await pair.b.register_agent("remote_agent")

    # spec 7.2, with the registry that tells the pool where agents are
    connection_pool = ConnectionPool(max_connections=10, idle_timeout=300, registry=pair.a.registry)
    assert (connection_pool.max_connections, connection_pool.idle_timeout) == (10, 300)
    try:
        for i in range(20):
            message = Message(sender_id="me", recipient_id="remote_agent", content={"i": i})
            async with connection_pool.get_connection() as conn:
                await conn.send_message(message)
        assert sorted([(await next_message(q)).content["i"] for _ in range(20)]) == list(range(20))
        assert connection_pool.connections_opened == 1  # one keep-alive connection, reused
        async with connection_pool.get_connection(pair.b.url, "remote_agent") as conn:
            await conn.send({"direct": True})
        assert (await next_message(q)).content == {"direct": True}
    finally:
        await connection_pool.close()
    with pytest.raises(NetworkError):
        async with connection_pool.get_connection():
            pass

    # 30 concurrent sends through a pool of 4 connections: they queue for the 4
    limited = NetworkProtocol(cfg(max_connections=4), pair.bus_a, storage=pair.a.storage)
    try:
        await asyncio.gather(
            *(limited.send_message("me", "remote_agent", {"k": i}) for i in range(30))
        )
        assert 1 <= limited.pool.connections_opened <= 4
        opened = limited.pool.connections_opened
        for i in range(10):
            await limited.send_message("me", "remote_agent", {"k": i})
        assert limited.pool.connections_opened == opened
    finally:
        await limited.stop()

    lone = ConnectionPool()
    try:
        with pytest.raises(UnknownAgentError, match="registry"):
            async with lone.get_connection() as conn:
                await conn.send_message(Message(recipient_id="remote_agent"))
    finally:
        await lone.close()


# ---------------------------------------------------------------------------- retries


async def test_transient_failures_are_retried_with_backoff() -> None:
    seen: list[web.Request] = []
    arrived = asyncio.Event()
    statuses = [503, 502, 202]

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        seen.append(request)
        arrived.set()
        status = statuses[len(seen) - 1]
        return web.json_response({"accepted": status == 202, "duplicate": False}, status=status)

    app = web.Application()
    app.router.add_post("/aos/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    clock = RecordingClock()
    pool = ConnectionPool(
        config=cfg(max_retries=3, retry_initial_delay=1.0, retry_backoff_multiplier=2.0),
        clock=clock,
    )
    try:
        msg = Message(sender_id="s", recipient_id="r", content={})
        task = asyncio.create_task(pool.deliver(msg, address=f"http://127.0.0.1:{port}"))
        for expected_wait in (1.0, 2.0):
            await asyncio.wait_for(clock.sleeping.wait(), 5)
            clock.sleeping.clear()
            assert clock.sleeps[-1] == expected_wait
            assert not task.done()
            clock.advance(expected_wait)
        receipt = await asyncio.wait_for(task, 5)
        assert receipt.attempts == 3 and len(seen) == 3
        assert all(r.headers[HEADER_SIGNATURE].startswith("v1=") for r in seen)
        assert pool.circuit(f"http://127.0.0.1:{port}").state is CircuitState.CLOSED
    finally:
        await pool.close()
        await runner.cleanup()


async def test_circuit_opens_fails_fast_and_failed_sends_are_dead_lettered() -> None:
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    clock = RecordingClock()
    config = cfg(max_retries=0, circuit_failure_threshold=3, circuit_recovery_timeout=30)
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(config, bus_a, clock=clock)
        await a.register_agent("remote_agent", address, ["x"])
        sent: list[str] = []
        try:
            for i in range(3):
                with pytest.raises(AgentUnreachableError, match="did not answer") as info:
                    await a.send_message("s", "remote_agent", {"i": i})
                assert not isinstance(info.value.__cause__, CircuitOpenError)
            assert a.pool.circuit(address).state is CircuitState.OPEN
            before = a.pool.requests_sent
            for i in range(3, 6):
                with pytest.raises(AgentUnreachableError, match="circuit is open") as info:
                    await a.send_message("s", "remote_agent", {"i": i})
                assert isinstance(info.value.__cause__, CircuitOpenError)
            assert a.pool.requests_sent == before  # failed fast: nothing was sent
            failed = await a.get_failed_messages("s")
            assert [m.content["i"] for m in failed] == list(range(6))
            reasons = [m.metadata["aos.dead_letter.reason"] for m in failed]
            assert reasons == ["unreachable"] * 3 + ["circuit_open"] * 3
            assert all(m.recipient_id == "remote_agent" for m in failed)
            sent = [m.message_id for m in failed]
            assert await bus_a.dead_letter_depth(outbox_queue("s")) == 6

            # still down and the circuit still open: resubmitting fails again, nothing lost
            report = await a.resubmit_failed("s")
            assert report.delivered == [] and sorted(report.failed) == sorted(sent)
            assert await bus_a.dead_letter_depth(outbox_queue("s")) == 6

            # the node comes up on that port; after the recovery timeout they all go through
            b = NetworkProtocol(cfg(port=port), bus_b)
            async with b:
                q = await inbox(bus_b, "remote_agent")
                await b.register_agent("remote_agent", capabilities=["x"])
                clock.advance(30)
                report = await a.resubmit_failed()
                assert sorted(report.delivered) == sorted(sent) and report.failed == []
                got = sorted([(await next_message(q)).content["i"] for _ in range(6)])
                assert got == list(range(6))
                assert await a.get_failed_messages("s") == []
                assert a.pool.circuit(address).state is CircuitState.CLOSED
        finally:
            await a.stop()


async def fail_three_sends(a: NetworkProtocol, port: int, **options: Any) -> None:
    """Register ``remote_agent`` at 127.0.0.1:``port``, where no node listens, and send it
    three messages (``{"i": 0..2}`` from ``s``): each fails, unreachable."""
    await a.register_agent("remote_agent", f"http://127.0.0.1:{port}")
    for i in range(3):
        with pytest.raises(AgentUnreachableError):
            await a.send_message("s", "remote_agent", {"i": i}, **options)


async def test_bus_resubmit_is_delivered_by_the_outbox_pump() -> None:
    port = free_port()
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(cfg(max_retries=0, circuit_failure_threshold=100), bus_a)
        async with a:
            await fail_three_sends(a, port, priority="HIGH")
            b = NetworkProtocol(cfg(port=port), bus_b)
            async with b:
                q = await inbox(bus_b, "remote_agent")
                await b.register_agent("remote_agent")
                for message in await bus_a.get_dead_letter_messages(outbox_queue("s")):
                    assert message.metadata["aos.dead_letter.reason"] == "unreachable"
                    assert "did not answer" in message.metadata["aos.dead_letter.error"]
                    await bus_a.resubmit(message)
                a.wake_outbox()
                got = [await next_message(q) for _ in range(3)]
                assert sorted(m.content["i"] for m in got) == [0, 1, 2]
                assert all(m.priority is MessagePriority.HIGH for m in got)
                assert await bus_a.dead_letter_depth(outbox_queue("s")) == 0
                assert await bus_a.queue_depth(outbox_queue("s")) == 0


async def test_reset_circuit_closes_a_node_circuit_at_once() -> None:
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    clock = ManualClock(start=time.time())  # never advanced: the circuit recovers only by reset
    config = cfg(max_retries=0, circuit_failure_threshold=1, circuit_recovery_timeout=3600)
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(config, bus_a, clock=clock)
        async with a:
            await a.register_agent("remote_agent", address)
            with pytest.raises(AgentUnreachableError, match="did not answer"):
                await a.send_message("s", "remote_agent", {"i": 0})
            assert a.pool.circuit(address).state is CircuitState.OPEN
            b = NetworkProtocol(cfg(port=port), bus_b)
            async with b:
                q = await inbox(bus_b, "remote_agent")
                await b.register_agent("remote_agent")
                # the node is back, but its circuit stays open for an hour of this clock
                with pytest.raises(AgentUnreachableError, match="circuit is open"):
                    await a.send_message("s", "remote_agent", {"i": 1})
                a.pool.reset_circuit(f"HTTP://127.0.0.1:{port}/")  # any spelling of the node
                assert a.pool.circuit(address).state is CircuitState.CLOSED
                before = a.pool.requests_sent
                receipt = await a.send_message("s", "remote_agent", {"i": 2})
                assert receipt.address == address and a.pool.requests_sent == before + 1
                assert (await next_message(q)).content == {"i": 2}


async def test_a_failed_send_goes_straight_to_the_dead_letters_and_a_repeat_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with memory_bus() as bus:
        node = NetworkProtocol(cfg(max_retries=0, circuit_failure_threshold=100), bus)
        async with node:
            await node.register_agent("far", f"http://127.0.0.1:{free_port()}")
            msg = Message(sender_id="s", recipient_id="far", content={"once": True})
            caplog.set_level("INFO", logger="aos.messaging.network")
            for _ in range(2):  # the same message fails twice: one dead letter, no other error
                with pytest.raises(AgentUnreachableError):
                    await node.send_message("s", "far", msg)
            (failed,) = await node.get_failed_messages("s")
            assert failed.message_id == msg.message_id
            assert failed.metadata["aos.dead_letter.reason"] == "unreachable"
            assert failed.metadata["aos.dead_letter.attempts"] == 1
            assert await bus.queue_depth(outbox_queue("s")) == 0  # never deliverable there
            assert f"message {msg.message_id} is already in {outbox_queue('s')}" in caplog.text
            assert "could not dead-letter" not in caplog.text


async def test_resubmit_failed_reports_all_it_put_back_while_the_pump_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(cfg(max_retries=0, circuit_failure_threshold=100), bus_a)
        async with a:
            await fail_three_sends(a, port)
            sent = [m.message_id for m in await a.get_failed_messages("s")]
            broker = bus_a.broker
            resubmit, depth = broker.resubmit, broker.depth
            pump_saw_it = asyncio.Event()

            async def seen_depth(queue: str) -> int:
                n = await depth(queue)
                if n > 0 and queue == outbox_queue("s"):
                    pump_saw_it.set()  # the pump goes on to drain the queue (its lock)
                return n

            async def resubmit_then_let_the_pump_look(queue: str, message_id: str) -> bool:
                ok = await resubmit(queue, message_id)
                if not pump_saw_it.is_set():
                    a.wake_outbox()
                    await asyncio.wait_for(pump_saw_it.wait(), 5.0)
                return ok

            monkeypatch.setattr(broker, "depth", seen_depth)
            monkeypatch.setattr(broker, "resubmit", resubmit_then_let_the_pump_look)
            b = NetworkProtocol(cfg(port=port), bus_b)
            async with b:
                q = await inbox(bus_b, "remote_agent")
                await b.register_agent("remote_agent")
                report = await a.resubmit_failed("s")
                assert sorted(report.delivered) == sorted(sent) and report.failed == []
                got = sorted([(await next_message(q)).content["i"] for _ in range(3)])
                assert got == [0, 1, 2]
                assert await bus_a.queue_depth(outbox_queue("s")) == 0


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_the_report_of_1300_failed_sends_resubmitted_is_exact_while_the_pump_runs(
    engine: str, tmp_path: Path
) -> None:
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    clock = ManualClock(start=time.time())  # never advanced: the circuit stays open
    config = cfg(max_retries=0, circuit_failure_threshold=1, circuit_recovery_timeout=3600)
    url = "memory://" if engine == "memory" else f"sqlite:///{tmp_path / 'a.db'}"
    bus = MessageBus(MessageBusConfig(broker_url=url))
    async with bus as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(config, bus_a, clock=clock)
        async with a:
            await a.register_agent("remote_agent", address)
            for i in range(1300):
                with pytest.raises(AgentUnreachableError):
                    await a.send_message("s", "remote_agent", {"i": i})
            sent = sorted(m.message_id for m in await a.get_failed_messages("s", limit=2000))
            assert len(sent) == 1300

            async def wake_the_pump() -> None:  # the pump looks all the time, racing resubmit
                while True:
                    a.wake_outbox()
                    await asyncio.sleep(0.002)

            waker = asyncio.create_task(wake_the_pump())
            try:
                report = await a.resubmit_failed("s")  # still down: all 1,300 fail again
                assert report.delivered == [] and sorted(report.failed) == sent
                failed = await a.get_failed_messages("s", limit=2000)
                assert sorted(m.message_id for m in failed) == sent
                assert {m.metadata["aos.dead_letter.reason"] for m in failed} == {"circuit_open"}
                assert report.reasons == dict.fromkeys(sent, "circuit_open")  # per message

                b = NetworkProtocol(cfg(port=port), bus_b)
                async with b:
                    q = await inbox(bus_b, "remote_agent")
                    await b.register_agent("remote_agent")
                    a.pool.reset_circuit(address)
                    report = await a.resubmit_failed("s")  # back: all 1,300 delivered
                    assert sorted(report.delivered) == sent and report.failed == []
                    assert report.reasons == {}
                    got = sorted([(await next_message(q)).content["i"] for _ in range(1300)])
                    assert got == list(range(1300))
                    assert await a.get_failed_messages("s") == []
            finally:
                waker.cancel()
                await asyncio.gather(waker, return_exceptions=True)


async def test_a_resubmitted_message_that_had_arrived_is_not_delivered_twice(pair: Pair) -> None:
    q = await inbox(pair.bus_b, "remote_agent")
    await pair.b.register_agent("remote_agent")
    msg = Message(sender_id="s", recipient_id="remote_agent", content={"once": True})
    await pair.a.send_message("s", "remote_agent", msg)
    again = await pair.a.send_message("s", "remote_agent", msg)  # e.g. a retry after a lost answer
    assert again.duplicate
    await pair.a.send_message("s", "remote_agent", {"marker": True})
    # FIFO: had the duplicate been enqueued, it would arrive before the marker
    assert (await next_message(q)).content == {"once": True}
    assert (await next_message(q)).content == {"marker": True}


# ---------------------------------------------------------------------------- bad input


async def raw_post(
    url: str,
    body: bytes,
    *,
    path: str = "/aos/v1/messages",
    secret: str | None = SECRET,
    now: float | None = None,
    sign_body: bytes | None = None,
    sign_path: str | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, Any]:
    h: dict[str, str] = {"Content-Type": "application/cloudevents+json"}
    if secret is not None:
        h.update(
            signature_headers(
                secret.encode(),
                "POST",
                sign_path or path,
                body if sign_body is None else sign_body,
                time.time() if now is None else now,
            )
        )
    h.update(headers or {})
    data: Any = body
    if chunked:

        async def gen() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 1000):
                yield body[i : i + 1000]

        data = gen()
    async with aiohttp.ClientSession() as s:
        async with s.post(url + path, data=data, headers=h) as resp:
            return resp.status, await resp.json(content_type=None)


async def test_bad_requests_are_refused_with_json_errors_and_the_node_keeps_serving() -> None:
    async with memory_bus() as bus:
        node = NetworkProtocol(cfg(max_body_bytes=4096), bus)
        async with node:
            q = await inbox(bus, "remote_agent")
            await node.register_agent("remote_agent")
            url = node.url
            good = encode(Message(sender_id="s", recipient_id="remote_agent", content={"ok": 1}))
            cases: list[tuple[int, str, dict[str, Any], bytes]] = [
                (401, "unauthorized", {"secret": None}, good),
                (401, "unauthorized", {"secret": "wrong-secret-0123456789"}, good),
                (401, "unauthorized", {"now": time.time() - 3600}, good),
                (401, "unauthorized", {"sign_body": b"{}"}, good),
                (401, "unauthorized", {"sign_path": "/aos/v1/other"}, good),
                (401, "unauthorized", {"headers": {HEADER_SIGNATURE: "v1=" + "0" * 64}}, good),
                (400, "bad_request", {}, b"{not json"),
                (400, "bad_request", {}, b'{"hello": "world"}'),
                (400, "bad_request", {}, b"[1, 2, 3]"),
                (
                    400,
                    "bad_request",
                    {},
                    encode(Message(sender_id="s", content={"no": "recipient"})),
                ),
                (413, "payload_too_large", {}, b"x" * 5000),
                (413, "payload_too_large", {"chunked": True}, b"x" * 9000),
                (
                    404,
                    "unknown_agent",
                    {},
                    encode(Message(sender_id="s", recipient_id="nobody", content={})),
                ),
            ]
            for status, code, kwargs, body in cases:
                got_status, payload = await raw_post(url, body, **kwargs)
                assert (got_status, payload["error"]["code"]) == (status, code), (kwargs, body[:40])
                assert payload["error"]["message"]
            # still serving, and nothing was published by the bad requests
            assert await bus.queue_depth("remote_agent") == 0
            status, payload = await raw_post(url, good)
            assert status == 202 and payload == {"accepted": True, "duplicate": False}
            assert (await next_message(q)).content == {"ok": 1}
            # a replayed request is deduplicated, not delivered twice
            status, payload = await raw_post(url, good)
            assert status == 202 and payload["duplicate"] is True
            async with aiohttp.ClientSession() as s:
                async with s.get(url + "/aos/v1/health") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["status"] == "ok"
                async with s.get(url + "/aos/v1/agents") as resp:
                    assert resp.status == 401
            marker = encode(Message(sender_id="s", recipient_id="remote_agent", content={"m": 1}))
            assert (await raw_post(url, marker))[0] == 202
            assert (await next_message(q)).content == {"m": 1}  # the replay never arrived


async def test_a_node_without_a_secret_refuses_node_messages_unless_allowed() -> None:
    async with memory_bus() as bus:
        locked = NetworkProtocol(cfg(auth_secret=None), bus)
        async with locked:
            await locked.register_agent("remote_agent")
            body = encode(Message(sender_id="s", recipient_id="remote_agent", content={}))
            status, payload = await raw_post(locked.url, body)
            assert status == 401 and "no auth_secret" in payload["error"]["message"]
    async with memory_bus() as bus:
        open_node = NetworkProtocol(cfg(auth_secret=None, allow_unsigned=True), bus)
        async with open_node:
            await open_node.register_agent("remote_agent")
            status, _ = await raw_post(open_node.url, body, secret=None)
            assert status == 202


async def test_previous_secrets_are_accepted_during_rotation(pair: Pair) -> None:
    async with memory_bus() as bus:
        rotated = NetworkProtocol(
            cfg(auth_secret="the-new-secret-0123456789", previous_auth_secrets=[SECRET]), bus
        )
        async with rotated:
            await rotated.register_agent("r")
            body = encode(Message(sender_id="s", recipient_id="r", content={}))
            assert (await raw_post(rotated.url, body))[0] == 202
            other = "the-new-secret-0123456789"
            assert (await raw_post(rotated.url, body, secret=other))[0] == 202


# ---------------------------------------------------------------------------- node


async def test_routes_can_be_added_to_the_app_before_start() -> None:
    node = NetworkProtocol(cfg())

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="aos_up 1\n")

    node.app.router.add_get("/metrics", metrics)
    with pytest.raises(NetworkError):
        _ = node.url
    async with node:
        assert node.serving and node.message_bus.started
        async with aiohttp.ClientSession() as s:
            async with s.get(node.url + "/metrics") as resp:
                assert resp.status == 200 and await resp.text() == "aos_up 1\n"
    assert not node.serving and not node.message_bus.started
    await node.stop()  # idempotent
    with pytest.raises(NetworkError):
        await node.send_message("a", "b", {})


async def test_start_fails_clearly_when_the_port_is_taken() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        node = NetworkProtocol(cfg(port=port))
        with pytest.raises(NetworkError, match="cannot listen"):
            await node.start()
        # everything it started is stopped again (no task left behind)
        assert not node.message_bus.started and node.pool.closed
        with pytest.raises(NetworkError, match="stopped"):
            await node.start()


async def test_a_given_bus_must_be_started() -> None:
    bus = memory_bus()
    node = NetworkProtocol(cfg(), bus)
    with pytest.raises(ConfigurationError, match="not started"):
        await node.start()
    await node.stop()


async def test_public_url_is_advertised(pair: Pair) -> None:
    async with memory_bus() as bus:
        node = NetworkProtocol(cfg(public_url="http://agents.example:9000"), bus)
        async with node:
            assert node.url == "http://agents.example:9000"
            info = await node.register_agent("a1")
            assert info.address == "http://agents.example:9000"
            assert [a.agent_id for a in await node.hosted_agents()] == ["a1"]
            # a card fetched through the real port still names the public address
            async with aiohttp.ClientSession() as s:
                port = node._server.runner.addresses[0][1]  # type: ignore[union-attr]
                card_url = f"http://127.0.0.1:{port}/agents/a1/.well-known/agent-card.json"
                async with s.get(card_url) as resp:
                    card = await resp.json()
            assert card["supportedInterfaces"][0]["url"] == "http://agents.example:9000/agents/a1"
            json.dumps(card)
