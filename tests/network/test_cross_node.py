"""Conversations that span nodes: ``bus.request()`` to an agent hosted on another node (an
OS process) is answered, or times out with our error; the hop count and causation id cross
nodes, so an A->B->A loop over two processes ends in a dead-letter queue with ``hop_limit``;
a trace over two nodes (in one process, to share the span exporter) has the right parent for
every span."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.core.context import current
from AgentOperatingSystem.messaging.errors import RequestFailedError, RequestTimeoutError
from AgentOperatingSystem.messaging.metadata import DLQ_ERROR, DLQ_REASON
from AgentOperatingSystem.messaging.network.node import NetworkProtocol
from AgentOperatingSystem.messaging.observability.bus_telemetry import BusTelemetry
from AgentOperatingSystem.messaging.policy import DeliveryOptions
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.network.nodes import SECRET, cfg, memory_bus
from tests.support.node_process import NodeProcess
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def near() -> AsyncIterator[NetworkProtocol]:
    """A node in this process, serving, on its own in-memory bus."""
    async with memory_bus() as bus:
        async with NetworkProtocol(cfg(node_id="near"), bus) as node:
            yield node


def far_node(tmp_path: Path, agents: list[dict[str, Any]], **kw: Any) -> NodeProcess:
    """A node in a child process on an in-memory bus."""
    return NodeProcess(
        tmp_path, secret=SECRET, name="far", agents=agents, bus_url="memory://", **kw
    )


async def test_request_to_an_agent_on_another_node_process_is_answered(
    near: NetworkProtocol, tmp_path: Path
) -> None:
    far = far_node(tmp_path, [{"agent_id": "echo", "behaviour": "echo"}])
    url = await asyncio.to_thread(far.start)
    try:
        await near.register_agent("echo", url)
        bus = near.message_bus
        answer = await bus.request("ceo", "echo", {"text": "hello"}, timeout=20)
        assert answer.message_type is MessageType.RESPONSE
        assert answer.content == {"text": "echo: hello"} and answer.sender_id == "echo"
        (asked,) = far.received()
        assert answer.correlation_id == asked["message_id"] and asked["sender_id"] == "ceo"
        # several at once, each answer to its own request
        texts = [f"t{i}" for i in range(8)]
        answers = await asyncio.gather(*(bus.request("ceo", "echo", {"text": t}) for t in texts))
        assert [a.content["text"] for a in answers] == [f"echo: {t}" for t in texts]
        assert await bus.queue_depth("echo") == 0  # nothing left behind on this node
    finally:
        await asyncio.to_thread(far.stop)


async def test_request_to_a_remote_agent_that_never_answers_raises_our_timeout(
    near: NetworkProtocol, tmp_path: Path
) -> None:
    far = far_node(tmp_path, [{"agent_id": "mute", "behaviour": "silent"}])
    url = await asyncio.to_thread(far.start)
    try:
        await near.register_agent("mute", url)
        with pytest.raises(RequestTimeoutError, match=r"no response from 'mute' within 0\.5s"):
            await near.message_bus.request("ceo", "mute", {"text": "anyone?"}, timeout=0.5)
        (got,) = await asyncio.to_thread(far.wait_count, 1)  # it arrived; no one answered
        assert got["content"] == {"text": "anyone?"}
    finally:
        await asyncio.to_thread(far.stop)


async def test_a_loop_across_two_node_processes_is_dead_lettered_with_hop_limit(
    near: NetworkProtocol, tmp_path: Path
) -> None:
    bus = near.message_bus
    limit = bus.config.hop_limit  # 32, the same on both nodes
    far = far_node(
        tmp_path,
        [{"agent_id": "pong", "behaviour": "bounce", "to": "ping"}],
        remote_agents=[{"agent_id": "ping", "address": near.url}],
    )
    url = await asyncio.to_thread(far.start)
    try:
        await near.register_agent("pong", url)
        pinged: list[DeliveryOptions] = []
        sent: list[str] = []

        async def ping(msg: Message) -> None:  # A: sends each message back to B
            running = current.get()
            assert running is not None
            pinged.append(running.options)
            back = Message(sender_id="ping", recipient_id="pong", content=msg.content)
            sent.append(back.message_id)
            await bus.publish(back)

        await bus.subscribe("ping", None, ping)
        await near.register_agent("ping")
        await bus.publish(Message(sender_id="starter", recipient_id="ping", content={"n": 1}))

        async def dead() -> bool:
            return await bus.dead_letter_depth("pong") == 1

        await eventually(dead, 30.0, "the looping message in pong's dead-letter queue")
        (looped,) = await bus.get_dead_letter_messages("pong")
        assert looped.metadata[DLQ_REASON] == "hop_limit"
        assert looped.metadata[DLQ_ERROR] == f"{limit + 1} hops > hop_limit {limit}"
        # A saw hops 0, 2, ..., 32 (B's publishes added one each, over there), B the odd ones
        assert [o.hops for o in pinged] == list(range(0, limit + 1, 2))
        assert len(far.received()) == limit // 2
        # each message A got names the one B got (which A had sent) as its cause
        assert [o.causation_id for o in pinged] == [None, *sent[:-1]]
    finally:
        await asyncio.to_thread(far.stop)


# ---------------------------------------------------------------------------- in process


@pytest.fixture
async def two() -> AsyncIterator[tuple[NetworkProtocol, NetworkProtocol]]:
    """Two serving nodes in this process, each on its own in-memory bus."""
    async with memory_bus() as bus1, memory_bus() as bus2:
        async with NetworkProtocol(cfg(node_id="n1"), bus1) as n1:
            async with NetworkProtocol(cfg(node_id="n2"), bus2) as n2:
                yield n1, n2


async def test_send_message_from_a_handler_carries_the_hop_count_and_cause(
    two: tuple[NetworkProtocol, NetworkProtocol],
) -> None:
    n1, n2 = two
    got: asyncio.Queue[DeliveryOptions] = asyncio.Queue()

    def far_agent(msg: Message) -> None:
        running = current.get()
        assert running is not None
        got.put_nowait(running.options)

    await n2.message_bus.subscribe("far_agent", None, far_agent)
    await n2.register_agent("far_agent")
    await n1.register_agent("far_agent", n2.url)
    handled: list[str] = []

    async def near_agent(msg: Message) -> None:
        handled.append(msg.message_id)
        await n1.send_message("near_agent", "far_agent", {"from": "handler"})

    await n1.message_bus.subscribe("near_agent", None, near_agent)
    await n1.message_bus.publish(Message(recipient_id="near_agent", content={}))
    options = await asyncio.wait_for(got.get(), 10)
    assert options.hops == 1 and options.causation_id == handled[0]
    await n1.send_message("outside", "far_agent", {"from": "outside"})  # no handler: no hop
    options = await asyncio.wait_for(got.get(), 10)
    assert options.hops == 0 and options.causation_id is None


async def test_the_relay_follows_the_registry_and_leaves_events_on_their_node(
    two: tuple[NetworkProtocol, NetworkProtocol],
) -> None:
    n1, n2 = two
    bus1, bus2 = n1.message_bus, n2.message_bus
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    await bus2.subscribe("agent", None, inbox.put_nowait)
    await n2.register_agent("agent")
    await bus1.subscribe("watcher", [MessageType.EVENT], lambda m: None)  # a local subscriber

    await n1.register_agent("agent", n2.url)
    assert "agent" in bus1.subscriptions  # its queue here is relayed to n2
    await bus1.publish(message_type=MessageType.EVENT, content={"event": "tick"})
    await bus1.publish(Message(sender_id="s", recipient_id="agent", content={"n": 1}))
    got = await asyncio.wait_for(inbox.get(), 10)
    assert got.content == {"n": 1}  # the event without a recipient stayed on n1
    assert inbox.empty()

    await n1.unregister_agent("agent")  # no longer relayed: a message for it waits here
    assert "agent" not in bus1.subscriptions
    await bus1.publish(Message(sender_id="s", recipient_id="agent", content={"n": 2}))
    assert await bus1.queue_depth("agent") == 1
    await n1.register_agent("agent", n2.url)  # relayed again: what waited goes on
    assert (await asyncio.wait_for(inbox.get(), 10)).content == {"n": 2}
    await n1.register_agent("agent")  # now hosted on n1 itself: the relay stops
    assert "agent" not in bus1.subscriptions


async def test_a_request_the_relay_cannot_deliver_fails_fast_and_is_dead_lettered() -> None:
    policy = {"max_attempts": 2, "initial_delay": 0.0}
    async with memory_bus(default_retry_policy=policy) as bus1, memory_bus() as bus2:
        async with NetworkProtocol(cfg(node_id="n1"), bus1) as n1:
            async with NetworkProtocol(cfg(node_id="n2"), bus2) as n2:
                await n1.register_agent("ghost", n2.url)  # n2 does not host it
                with pytest.raises(RequestFailedError, match="max_attempts") as info:
                    await bus1.request("ceo", "ghost", {"q": 1}, timeout=20)
                assert "does not host agent 'ghost'" in str(info.value.error)
                (dead,) = await bus1.get_dead_letter_messages("ghost")
                assert dead.metadata[DLQ_REASON] == "max_attempts"


# ---------------------------------------------------------------------------- tracing


def _traced_bus(exporter: InMemorySpanExporter, name: str) -> MessageBus:
    """An in-memory bus whose spans go to ``exporter``, as service ``name``."""
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = MessageBusConfig(broker_url="memory://", enable_tracing=True)
    return MessageBus(config, telemetry=BusTelemetry(config, tracer_provider=provider))


def _span(spans: list[ReadableSpan], name: str, node: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name and s.resource.attributes["service.name"] == node]
    return span


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_trace_over_three_hops_on_two_nodes_has_the_right_parents() -> None:
    """In one process: both nodes' spans go to one in-memory exporter."""
    exporter = InMemorySpanExporter()
    async with _traced_bus(exporter, "n1") as bus1, _traced_bus(exporter, "n2") as bus2:
        async with (
            NetworkProtocol(cfg(node_id="n1"), bus1) as n1,
            NetworkProtocol(cfg(node_id="n2"), bus2) as n2,
        ):
            await n2.register_agent("cfo")
            await n1.register_agent("analyst")
            await n1.register_agent("cfo", n2.url)
            await n2.register_agent("analyst", n1.url)
            seen: dict[str, DeliveryOptions] = {}
            cfo_got: list[str] = []

            async def cfo(msg: Message) -> dict[str, Any]:  # on n2: asks n1's analyst
                cfo_got.append(msg.message_id)
                figures = await bus2.request("cfo", "analyst", {"q": msg.content["q"]})
                return {"answer": figures.content["revenue"]}

            def analyst(msg: Message) -> dict[str, Any]:  # on n1
                running = current.get()
                assert running is not None
                seen["analyst"] = running.options
                return {"revenue": 42}

            await bus2.subscribe("cfo", [MessageType.QUERY], cfo)
            await bus1.subscribe("analyst", [MessageType.QUERY], analyst)
            root = trace.get_tracer("test", tracer_provider=TracerProvider()).start_span("ceo")
            with trace.use_span(root, end_on_exit=True):
                answer = await bus1.request("ceo", "cfo", {"q": "Q3 revenue?"}, timeout=20)
            assert answer.content == {"answer": 42}

            async def all_ended() -> bool:  # the reply listeners' spans end after the answer
                names = [s.name for s in exporter.get_finished_spans()]
                return names.count("process _reply") >= 2

            await eventually(all_ended, 10.0, "every span ended")
    # hop 1, n1 -> n2: ceo's request; hop 2, n2 -> n1: cfo's request; hop 3, n1 -> n2: the
    # analyst's answer (and back to n1 with cfo's)
    spans = list(exporter.get_finished_spans())
    assert len({s.context.trace_id for s in spans}) == 1  # one trace
    ask_cfo_n1 = _span(spans, "publish cfo", "n1")
    ask_cfo_n2 = _span(spans, "publish cfo", "n2")
    cfo_runs = _span(spans, "process cfo", "n2")
    ask_analyst_n2 = _span(spans, "publish analyst", "n2")
    ask_analyst_n1 = _span(spans, "publish analyst", "n1")
    analyst_runs = _span(spans, "process analyst", "n1")
    assert _parent(ask_cfo_n1) == root.get_span_context().span_id
    assert _parent(ask_cfo_n2) == ask_cfo_n1.context.span_id  # across the node
    assert _parent(cfo_runs) == ask_cfo_n2.context.span_id
    assert _parent(ask_analyst_n2) == cfo_runs.context.span_id
    assert _parent(ask_analyst_n1) == ask_analyst_n2.context.span_id  # across the node
    assert _parent(analyst_runs) == ask_analyst_n1.context.span_id
    # the relays' own spans hang off the publish they send on
    assert _parent(_span(spans, "process cfo", "n1")) == ask_cfo_n1.context.span_id
    assert _parent(_span(spans, "process analyst", "n2")) == ask_analyst_n2.context.span_id
    # the answers: each one's publish is a child of the handler that answered
    answers = [s for s in spans if s.name.startswith("publish _reply")]
    by_parent = {_parent(s): s.resource.attributes["service.name"] for s in answers}
    assert by_parent[analyst_runs.context.span_id] == "n1"
    assert by_parent[cfo_runs.context.span_id] == "n2"
    # the causation id crossed from n2 to n1 with the hop count
    assert seen["analyst"].hops == 1
    assert seen["analyst"].causation_id == cfo_got[0]
