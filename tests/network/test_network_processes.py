"""NetworkProtocol across OS processes: the spec's section 3.4 examples as written, and a
receiving node killed (SIGKILL) in the middle of a stream of sends: the sender's circuit
opens, sends fail fast, undelivered messages wait in the dead-letter queue and, once the node
is back, are resubmitted and arrive. Nothing is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.config.network import NetworkConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.errors import (
    AgentUnreachableError,
    CircuitOpenError,
    NetworkError,
)
from AgentOperatingSystem.messaging.network.node import NetworkProtocol
from AgentOperatingSystem.messaging.network.outbox import outbox_queue
from AgentOperatingSystem.messaging.types import Message
from AgentOperatingSystem.reliability.circuit_breaker import CircuitState
from tests.network.nodes import SECRET
from tests.support.node_process import NodeProcess

pytestmark = pytest.mark.timeout(120)


async def test_spec_3_4_examples_run_as_written_between_two_processes(tmp_path: Path) -> None:
    storage_url = f"sqlite:///{tmp_path / 'registry.db'}"  # the registry both nodes share
    remote = NodeProcess(
        tmp_path,
        secret=SECRET,
        name="remote",
        storage_url=storage_url,
        agents=[{"agent_id": "remote_agent", "capabilities": ["financial_analysis"]}],
    )
    remote_service = await asyncio.to_thread(remote.start)
    config = NetworkConfig(host="127.0.0.1", port=0, auth_secret=SECRET, storage_url=storage_url)
    message_data = {"task": "quarterly_report", "quarter": "Q3"}
    message = {"text": "and the forecast, please"}
    try:
        # ---- spec section 3.4, as written (the address is the other node's real one)
        protocol = NetworkProtocol(config)

        # Register agent on network
        await protocol.register_agent(
            agent_id="ceo_agent",
            address=remote_service,
            capabilities=["strategy", "decision_making"],
        )

        # Send message to remote agent
        await protocol.send_message(
            sender_id="local_agent", recipient_id="remote_agent", message=message_data
        )

        # Discover available agents
        agents = await protocol.discover_agents(capabilities=["financial_analysis"])

        # Establish persistent connection
        connection = await protocol.connect(agent_id="remote_agent", address=remote_service)

        # Send via connection
        await connection.send(message)

        # Close connection
        await connection.close()
        # ---- end of the spec's example

        assert [(a.agent_id, a.address) for a in agents] == [("remote_agent", remote_service)]
        (ceo,) = await protocol.discover_agents(capabilities=["strategy"])
        assert ceo.address == remote_service
        records = await asyncio.to_thread(remote.wait_count, 2)
        assert [(r["agent_id"], r["sender_id"], r["content"]) for r in records] == [
            ("remote_agent", "local_agent", message_data),
            ("remote_agent", protocol.node_id, message),
        ]
        # the other process registered remote_agent; it sees ceo_agent as hosted by itself
        receipt = await protocol.send_message("local_agent", "ceo_agent", {"x": 1})
        assert receipt.address == remote_service
        await protocol.stop()
    finally:
        await asyncio.to_thread(remote.stop)


async def test_killing_the_receiving_node_mid_stream_loses_nothing(tmp_path: Path) -> None:
    sink = NodeProcess(
        tmp_path,
        secret=SECRET,
        name="sink",
        agents=[{"agent_id": "sink"}],
        bus_config={"lock_seconds": 1.0},  # a message locked at the crash comes back soon
    )
    sink_url = await asyncio.to_thread(sink.start)
    clock = ManualClock(start=time.time())  # drives the circuit's recovery timeout
    config = NetworkConfig(
        host="127.0.0.1",
        port=0,
        auth_secret=SECRET,
        max_retries=2,
        retry_initial_delay=0.0,
        retry_jitter=0.0,
        circuit_failure_threshold=3,
        circuit_recovery_timeout=30.0,
        connect_timeout=2.0,
        request_timeout=5.0,
    )
    try:
        async with MessageBus(MessageBusConfig(broker_url=f"sqlite:///{tmp_path / 'a.db'}")) as bus:
            protocol = NetworkProtocol(config, bus, clock=clock)
            async with protocol:
                await protocol.register_agent("sink", sink_url)
                ids: list[str] = []
                ok: set[str] = set()
                errors: dict[str, NetworkError] = {}

                async def producer(first: int) -> None:
                    for i in range(first, 160, 4):
                        msg = Message(sender_id="producer", recipient_id="sink", content={"i": i})
                        ids.append(msg.message_id)
                        try:
                            await protocol.send_message("producer", "sink", msg)
                            ok.add(msg.message_id)
                        except NetworkError as exc:
                            errors[msg.message_id] = exc
                        if i == 60:
                            sink.kill()  # SIGKILL while the other producers are sending

                await asyncio.gather(*(producer(k) for k in range(4)))
                assert len(ids) == 160
                assert len(ok) >= 40 and len(errors) >= 80
                assert all(isinstance(e, AgentUnreachableError) for e in errors.values())
                fast = [e for e in errors.values() if isinstance(e.__cause__, CircuitOpenError)]
                assert len(fast) >= 70
                assert protocol.pool.circuit(sink_url).state is CircuitState.OPEN

                # failing fast: no request is made while the circuit is open
                before = protocol.pool.requests_sent
                late = Message(sender_id="producer", recipient_id="sink", content={"late": True})
                ids.append(late.message_id)
                with pytest.raises(AgentUnreachableError, match="circuit is open"):
                    await protocol.send_message("producer", "sink", late)
                assert protocol.pool.requests_sent == before

                # everything that was not accepted is in the dead-letter queue, with why
                failed = await protocol.get_failed_messages("producer", limit=1000)
                assert {m.message_id for m in failed} == set(ids) - ok
                reasons = {m.metadata["aos.dead_letter.reason"] for m in failed}
                assert reasons <= {"unreachable", "circuit_open"} and "circuit_open" in reasons

                # the node comes back (same port, same durable bus); the circuit half-opens
                await asyncio.to_thread(sink.start)
                clock.advance(config.circuit_recovery_timeout)
                report = await protocol.resubmit_failed("producer")
                assert report.failed == []
                assert set(report.delivered) == set(ids) - ok
                assert await bus.dead_letter_depth(outbox_queue("producer")) == 0
                assert protocol.pool.circuit(sink_url).state is CircuitState.CLOSED

                records = await asyncio.to_thread(sink.wait_received, set(ids), 30.0)
                assert {r["message_id"] for r in records} == set(ids)
    finally:
        await asyncio.to_thread(sink.stop)
