"""Observability: metrics registry and Prometheus text, bus counters and histograms, the
/metrics endpoint, OpenTelemetry spans in one process and across two OS processes."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.errors import ConfigurationError
from AgentOperatingSystem.messaging.observability import telemetry as front
from AgentOperatingSystem.messaging.observability.bus_telemetry import BusTelemetry
from AgentOperatingSystem.messaging.observability.http import install_metrics
from AgentOperatingSystem.messaging.observability.metrics import (
    PROMETHEUS_CONTENT_TYPE,
    MetricsRegistry,
    metrics,
)
from AgentOperatingSystem.messaging.observability.tracing import (
    TRACEPARENT_KEY,
    http_trace_headers,
)
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.support.waiting import eventually

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` with the labels in name order (the exposition may write
    them in any order); also checks every line is valid exposition syntax."""
    out: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, f"duplicate family {name}"
            types[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = ""
        if m.group(2):
            pairs = sorted(LABEL.findall(m.group(2)))
            labels = "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"
        out[f"{m.group(1)}{labels}"] = float(m.group(3))
    return out


def tracer() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def handler_until(
    n: int, *, fail_once_on: int | None = None
) -> tuple[Callable[[Message], Awaitable[None]], asyncio.Event]:
    """A handler and the event it sets at its ``n``-th call; with ``fail_once_on``, the first
    call for the message whose ``content["i"]`` is that number raises."""
    done = asyncio.Event()
    calls = 0
    failed = False

    async def handler(m: Message) -> None:
        nonlocal calls, failed
        calls += 1
        if not failed and fail_once_on is not None and m.content.get("i") == fail_once_on:
            failed = True
            raise RuntimeError("one failure")
        if calls == n:
            done.set()

    return handler, done


async def samples_once_acked(tel: BusTelemetry, agent: str, n: int) -> dict[str, float]:
    """The bus's Prometheus samples once ``n`` of ``agent``'s tasks are acked."""

    async def acked() -> bool:
        return tel.series_value(agent, "task", "acked") == n

    await eventually(acked, 5.0)
    return parse_prometheus(tel.render())


def message_totals(samples: dict[str, float], agent: str, *counters: str) -> list[float]:
    """The ``message_bus_messages_<counter>_total`` samples of ``agent``'s tasks."""
    labels = f'agent="{agent}",message_type="task"'
    return [samples[f"message_bus_messages_{c}_total{{{labels}}}"] for c in counters]


# ---------------------------------------------------------------------------- registry


def test_registry_renders_spec_calls_in_prometheus_format() -> None:
    reg = MetricsRegistry(buckets=(0.1, 1.0))
    reg.gauge("message_bus.queue_depth", 7, labels={"agent": "cfo_agent"})
    reg.increment("message_bus.messages_published")
    reg.increment("message_bus.messages_published", 2)
    reg.timing("message_bus.delivery_latency", 50)  # ms
    reg.timing("message_bus.delivery_latency", 500)
    reg.timing("message_bus.delivery_latency", 5000)
    text = reg.render()
    samples = parse_prometheus(text)
    assert samples['message_bus_queue_depth{agent="cfo_agent"}'] == 7
    assert samples["message_bus_messages_published_total"] == 3
    assert samples['message_bus_delivery_latency_seconds_bucket{le="0.1"}'] == 1
    assert samples['message_bus_delivery_latency_seconds_bucket{le="1.0"}'] == 2
    assert samples['message_bus_delivery_latency_seconds_bucket{le="+Inf"}'] == 3
    assert samples["message_bus_delivery_latency_seconds_count"] == 3
    assert samples["message_bus_delivery_latency_seconds_sum"] == pytest.approx(5.55)
    assert "# TYPE message_bus_messages_published_total counter" in text
    assert "# TYPE message_bus_delivery_latency_seconds histogram" in text
    assert reg.value("message_bus.messages_published") is None  # exposed names only
    assert reg.value("message_bus_messages_published") == 3
    assert reg.value("message_bus_queue_depth", {"agent": "cfo_agent"}) == 7


def test_registry_escapes_labels_and_keeps_kinds() -> None:
    reg = MetricsRegistry()
    reg.increment("weird", labels={"agent": 'a"b\\c\nd', "9bad-name": "x"})
    line = next(ln for ln in reg.render().splitlines() if ln.startswith("weird_total{"))
    assert line == 'weird_total{_9bad_name="x",agent="a\\"b\\\\c\\nd"} 1.0'
    with pytest.raises(ConfigurationError):
        reg.gauge("weird_total", 1)
    with pytest.raises(ConfigurationError):
        reg.increment("weird", -1)


def test_registry_is_a_prometheus_client_registry() -> None:
    """The metrics live in ``prometheus_client`` (scrapable by its own tools too); a name
    keeps its label names; the library's ``_created`` series are left out of ``render``."""
    from prometheus_client import CollectorRegistry, generate_latest

    reg = MetricsRegistry()
    reg.increment("jobs", labels={"queue": "a"})
    reg.timing("job", 20, labels={"queue": "a"})
    assert isinstance(reg.registry, CollectorRegistry)
    assert reg.registry.get_sample_value("jobs_total", {"queue": "a"}) == 1
    assert b'jobs_total{queue="a"} 1.0' in generate_latest(reg.registry)
    assert "_created" not in reg.render()
    assert reg.value("job_seconds", {"queue": "a"}) == 1
    with pytest.raises(ConfigurationError, match="labels"):
        reg.increment("jobs", labels={"queue": "a", "extra": "x"})
    with pytest.raises(ConfigurationError):
        reg.observe("bad", 1, labels={"le": "1"})  # a label a histogram reserves


# ---------------------------------------------------------------------------- bus metrics


async def test_disabled_telemetry_leaves_the_hot_path_alone() -> None:
    async with MessageBus(MessageBusConfig(broker_url="memory://")) as bus:
        assert bus.telemetry is None


async def test_counters_and_latency_follow_the_messages() -> None:
    clock = ManualClock()
    config = MessageBusConfig(
        broker_url="memory://", enable_metrics=True, poll_interval=0.01, metrics_sample_every=1
    )
    async with MessageBus(config, clock=clock) as bus:
        tel = bus.telemetry
        assert isinstance(tel, BusTelemetry)
        for i in range(3):
            await bus.publish(
                message_type=MessageType.TASK, recipient_id="worker", content={"i": i}
            )
        assert tel.series_value("worker", "task", "published") == 3
        clock.advance(2.5)  # they wait 2.5 s in the queue
        handler, done = handler_until(3)
        await bus.subscribe("worker", [MessageType.TASK], handler)
        await asyncio.wait_for(done.wait(), 5)
        samples = await samples_once_acked(tel, "worker", 3)
        assert tel.series_value("worker", "task", "delivered") == 3
        totals = message_totals(samples, "worker", "published", "delivered", "acked")
        assert totals == [3, 3, 3]
        labels = 'agent="worker",message_type="task"'
        # Latency measured on the bus clock: exactly 2.5 s, in the le="2.5" bucket.
        bucket = 'message_bus_delivery_latency_seconds_bucket{agent="worker",le="%s",message_type="task"}'
        assert samples[bucket % "1.0"] == 0
        assert samples[bucket % "2.5"] == 3
        assert samples[f"message_bus_delivery_latency_seconds_sum{{{labels}}}"] == 7.5
        assert samples[f"message_bus_handler_duration_seconds_count{{{labels}}}"] == 3


async def test_metrics_only_counts_exactly_and_samples_timings() -> None:
    """With metrics but no spans the bus counts per batch (every counter exact) and times one
    handler in ``metrics_sample_every`` (the histograms hold that share)."""
    config = MessageBusConfig(
        broker_url="memory://",
        enable_metrics=True,
        poll_interval=0.01,
        metrics_sample_every=8,
        default_retry_policy={"initial_delay": 0.0},
    )
    async with MessageBus(config) as bus:
        tel = bus.telemetry
        assert isinstance(tel, BusTelemetry) and not tel.per_message
        for i in range(32):
            await bus.publish(
                Message(
                    message_type=MessageType.TASK,
                    sender_id="t",
                    recipient_id="worker",
                    content={"i": i},
                )
            )
        handler, done = handler_until(33, fail_once_on=5)
        await bus.subscribe("worker", [MessageType.TASK], handler)
        await asyncio.wait_for(done.wait(), 5)
        samples = await samples_once_acked(tel, "worker", 32)
        totals = message_totals(samples, "worker", "published", "delivered", "acked", "nacked")
        assert totals == [32, 33, 32, 1]
        labels = 'agent="worker",message_type="task"'
        assert samples[f"message_bus_handler_errors_total{{{labels}}}"] == 1
        timed = samples[f"message_bus_handler_duration_seconds_count{{{labels}}}"]
        assert timed == samples[f"message_bus_delivery_latency_seconds_count{{{labels}}}"]
        assert 3 <= timed <= 5  # one in eight of 33 handler calls (32 that succeeded are timed)


async def test_failures_nacks_dead_letters_and_expiry_are_counted() -> None:
    clock = ManualClock()
    config = MessageBusConfig(broker_url="memory://", enable_metrics=True, poll_interval=0.01)
    async with MessageBus(config, clock=clock) as bus:
        tel = bus.telemetry
        assert isinstance(tel, BusTelemetry)

        # A handler that always fails, one attempt: dead-lettered.
        def boom(m: Message) -> None:
            raise RuntimeError("boom")

        await bus.publish(
            message_type=MessageType.TASK,
            recipient_id="fragile",
            retry_policy={"max_attempts": 1},
        )
        await bus.subscribe("fragile", [MessageType.TASK], boom)

        async def dead() -> bool:
            return tel.series_value("fragile", "task", "dead_lettered") == 1

        await eventually(dead, 5.0)
        assert tel.series_value("fragile", "task", "errors") == 1
        assert tel.series_value("fragile", "task", "acked") == 0

        # The pull side: delivered, nacked (with and without a delay), acked.
        for _ in range(3):
            await bus.publish(message_type=MessageType.QUERY, recipient_id="puller")
        got = await bus.get_messages("puller", 3)
        assert len(got) == 3
        assert tel.series_value("puller", "query", "delivered") == 3
        await bus.nack(got[0].message_id)
        await bus.nack(got[1].message_id, delay=5)
        await bus.acknowledge(got[2].message_id)
        assert tel.series_value("puller", "query", "nacked") == 2
        assert tel.series_value("puller", "query", "acked") == 1

        # Expired before delivery.
        await bus.publish(message_type=MessageType.EVENT, recipient_id="late", ttl=1)
        clock.advance(2)
        assert await bus.get_messages("late", 1) == []
        assert tel.series_value("late", "event", "expired") == 1
        text = tel.render()
        assert 'message_bus_messages_expired_total{agent="late",message_type="event"} 1' in text
        assert (
            'message_bus_messages_dead_lettered_total{agent="fragile",message_type="task"} 1'
            in text
        )


async def test_metrics_endpoint_counters_move_as_messages_flow() -> None:
    config = MessageBusConfig(
        broker_url="memory://", enable_metrics=True, poll_interval=0.01, metrics_sample_every=1
    )
    async with MessageBus(config) as bus:
        app = web.Application()
        install_metrics(app, bus)
        metrics.increment("app.custom_events", labels={"source": "test"})
        async with TestClient(TestServer(app)) as client:

            async def scrape() -> dict[str, float]:
                resp = await client.get("/metrics")
                assert resp.status == 200
                assert resp.headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE
                return parse_prometheus(await resp.text())

            before = await scrape()
            assert before['app_custom_events_total{source="test"}'] >= 1
            assert not any('agent="inbox"' in k for k in before)

            for _ in range(4):
                await bus.publish(message_type=MessageType.TASK, recipient_id="inbox")
            mid = await scrape()
            labels = 'agent="inbox",message_type="task"'
            assert mid[f"message_bus_messages_published_total{{{labels}}}"] == 4
            assert mid['message_bus_queue_depth{agent="inbox"}'] == 4
            assert mid[f"message_bus_messages_acked_total{{{labels}}}"] == 0

            done = asyncio.Event()
            count = 0

            def handler(m: Message) -> None:
                nonlocal count
                count += 1
                if count == 4:
                    done.set()

            await bus.subscribe("inbox", [MessageType.TASK], handler)
            await asyncio.wait_for(done.wait(), 5)

            async def settled() -> bool:
                s = await scrape()
                return s[f"message_bus_messages_acked_total{{{labels}}}"] == 4

            await eventually(settled, 5.0)
            after = await scrape()
            assert after[f"message_bus_messages_delivered_total{{{labels}}}"] == 4
            assert after['message_bus_queue_depth{agent="inbox"}'] == 0
            assert after[f"message_bus_handler_duration_seconds_count{{{labels}}}"] == 4


async def test_install_metrics_gives_a_plain_bus_telemetry() -> None:
    async with MessageBus(MessageBusConfig(broker_url="memory://")) as bus:
        assert bus.telemetry is None
        app = web.Application()
        install_metrics(app, bus)
        assert isinstance(bus.telemetry, BusTelemetry)
        await bus.publish(message_type=MessageType.TASK, recipient_id="x")
        async with TestClient(TestServer(app)) as client:
            text = await (await client.get("/metrics")).text()
        assert 'message_bus_messages_published_total{agent="x",message_type="task"} 1' in text


# ---------------------------------------------------------------------------- tracing


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_spans_link_publisher_and_handler_with_string_attributes() -> None:
    provider, exporter = tracer()
    config = MessageBusConfig(broker_url="memory://", enable_tracing=True, poll_interval=0.01)
    tel = BusTelemetry(config, tracer_provider=provider)
    async with MessageBus(config, telemetry=tel) as bus:
        done = asyncio.Event()

        async def worker(m: Message) -> None:
            await bus.publish(
                message_type=MessageType.EVENT, recipient_id="auditor", content={"event": "seen"}
            )
            done.set()

        await bus.subscribe("worker", [MessageType.TASK], worker)
        root = provider.get_tracer("test").start_span("orchestrate")
        from opentelemetry import trace

        with trace.use_span(root, end_on_exit=True):
            await bus.publish(
                message_type=MessageType.TASK,
                sender_id="orchestrator",
                recipient_id="worker",
                content={"n": 1},
            )
        await asyncio.wait_for(done.wait(), 5)

        async def four() -> bool:
            return len(exporter.get_finished_spans()) >= 4

        await eventually(four, 5.0)
    spans = exporter.get_finished_spans()
    publish = _by_name(spans, "publish worker")
    process = _by_name(spans, "process worker")
    child = _by_name(spans, "publish auditor")
    assert len({s.context.trace_id for s in spans}) == 1
    assert publish.parent is not None and publish.parent.span_id == root.get_span_context().span_id
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert child.parent is not None and child.parent.span_id == process.context.span_id
    assert publish.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    attrs = dict(process.attributes or {})
    assert all(isinstance(v, str) for v in attrs.values())
    assert attrs["messaging.system"] == "aos"
    assert attrs["aos.message_type"] == "task"
    assert attrs["aos.recipient_id"] == "worker"
    assert attrs["aos.sender_id"] == "orchestrator"
    assert attrs["aos.attempt"] == "1"
    assert attrs["messaging.message.id"] == dict(publish.attributes or {})["messaging.message.id"]


async def test_handler_error_marks_the_span_and_trace_context_crosses_sqlite(
    tmp_path: Path,
) -> None:
    await _error_span_through(f"sqlite:///{tmp_path / 'bus.db'}")


@pytest.mark.nats
async def test_trace_context_crosses_nats(nats_url: str, nats_namespace: str) -> None:
    await _error_span_through(f"{nats_url}?namespace={nats_namespace}")


async def _error_span_through(url: str) -> None:
    provider, exporter = tracer()
    config = MessageBusConfig(broker_url=url, enable_tracing=True, poll_interval=0.02)
    tel = BusTelemetry(config, tracer_provider=provider)
    async with MessageBus(config, telemetry=tel) as bus:
        await bus.publish(
            message_type=MessageType.TASK,
            recipient_id="fragile",
            retry_policy={"max_attempts": 1},
        )
        got: list[Message] = []

        def boom(m: Message) -> None:
            got.append(m)
            raise ValueError("bad input")

        await bus.subscribe("fragile", [MessageType.TASK], boom)

        async def dead() -> bool:
            return await bus.dead_letter_depth("fragile") == 1

        await eventually(dead, 5.0)
    # The message went through the engine as bytes and still carried its context.
    assert TRACEPARENT.match(got[0].metadata[TRACEPARENT_KEY])
    assert http_trace_headers(got[0])["traceparent"] == got[0].metadata[TRACEPARENT_KEY]
    spans = exporter.get_finished_spans()
    publish = _by_name(spans, "publish fragile")
    process = _by_name(spans, "process fragile")
    assert process.parent is not None and process.parent.span_id == publish.context.span_id
    assert process.status.status_code is StatusCode.ERROR
    assert dict(process.attributes or {})["error.type"] == "ValueError"
    assert any(e.name == "exception" for e in process.events)


async def test_no_sdk_means_no_spans_and_no_trace_context() -> None:
    config = MessageBusConfig(broker_url="memory://", enable_tracing=True)
    async with MessageBus(config) as bus:
        tel = bus.telemetry
        assert isinstance(tel, BusTelemetry)
        assert not tel.tracing_active  # no global SDK provider in this test process
        msg = Message(message_type=MessageType.TASK, recipient_id="x")
        await bus.publish(msg)
        assert TRACEPARENT_KEY not in msg.metadata


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from AgentOperatingSystem.config.messagebus import MessageBusConfig
    from AgentOperatingSystem.messaging.bus import MessageBus
    from AgentOperatingSystem.messaging.observability.bus_telemetry import BusTelemetry
    from AgentOperatingSystem.messaging.types import MessageType

    async def main(db, out):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        config = MessageBusConfig(
            broker_url="sqlite:///" + db, enable_tracing=True, poll_interval=0.02)
        tel = BusTelemetry(config, tracer_provider=provider)
        async with MessageBus(config, telemetry=tel) as bus:
            async def cfo(message):
                return {"revenue": 42, "asked": message.content["q"]}
            await bus.subscribe("cfo_agent", [MessageType.QUERY], cfo)
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        spans = [
            {
                "name": s.name,
                "kind": s.kind.name,
                "trace_id": format(s.context.trace_id, "032x"),
                "span_id": format(s.context.span_id, "016x"),
                "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                "remote_parent": bool(s.parent and s.parent.is_remote),
                "attributes": dict(s.attributes),
            }
            for s in exporter.get_finished_spans()
        ]
        with open(out, "w") as fh:
            json.dump(spans, fh)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_one_trace_spans_a_request_across_two_processes(tmp_path: Path) -> None:
    db = str(tmp_path / "shared.db")
    out = tmp_path / "child-spans.json"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    provider, exporter = tracer()
    config = MessageBusConfig(broker_url=f"sqlite:///{db}", enable_tracing=True, poll_interval=0.02)
    tel = BusTelemetry(config, tracer_provider=provider)
    async with MessageBus(config, telemetry=tel) as bus:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            db,
            str(out),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line.strip() == b"ready"
            root = provider.get_tracer("test").start_span("ceo asks")
            from opentelemetry import trace

            with trace.use_span(root, end_on_exit=True):
                answer = await bus.request(
                    sender_id="ceo_agent",
                    recipient_id="cfo_agent",
                    content={"q": "Q2 revenue?"},
                    timeout=20,
                )
            assert answer.content == {"revenue": 42, "asked": "Q2 revenue?"}
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

        async def reply_span() -> bool:
            return any(s.name == "process _reply" for s in exporter.get_finished_spans())

        await eventually(reply_span, 5.0)
    child = {s["name"]: s for s in json.loads(out.read_text())}
    parent = exporter.get_finished_spans()
    request = _by_name(parent, "publish cfo_agent")
    reply = _by_name(parent, "process _reply")
    trace_id = format(root.get_span_context().trace_id, "032x")

    handled = child["process cfo_agent"]
    responded = child["publish _reply"]
    assert responded["attributes"]["messaging.destination.name"] == bus.reply_queue
    # One trace, from the sender through the handler in the other process and back.
    assert {s["trace_id"] for s in child.values()} == {trace_id}
    assert {format(s.context.trace_id, "032x") for s in parent} == {trace_id}
    assert request.parent is not None and request.parent.span_id == root.get_span_context().span_id
    assert handled["parent_id"] == format(request.context.span_id, "016x")
    assert handled["remote_parent"] is True
    assert handled["kind"] == "CONSUMER" and responded["kind"] == "PRODUCER"
    assert responded["parent_id"] == handled["span_id"]
    assert reply.parent is not None
    assert format(reply.parent.span_id, "016x") == responded["span_id"]
    assert handled["attributes"]["aos.message_type"] == "query"
    assert handled["attributes"]["aos.sender_id"] == "ceo_agent"


async def test_trace_context_crosses_http_between_nodes() -> None:
    from AgentOperatingSystem.config.network import NetworkConfig
    from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol
    from AgentOperatingSystem.storage.manager import StorageManager

    secret = "observability-test-secret-0123"
    provider, exporter = tracer()
    storage = StorageManager("memory://")
    cfg = MessageBusConfig(broker_url="memory://", enable_tracing=True, poll_interval=0.01)
    tel_a = BusTelemetry(cfg, tracer_provider=provider)
    tel_b = BusTelemetry(cfg, tracer_provider=provider)
    got: asyncio.Queue[Message] = asyncio.Queue()
    async with MessageBus(cfg, telemetry=tel_a) as bus_a, MessageBus(cfg, telemetry=tel_b) as bus_b:
        a = NetworkProtocol(
            NetworkConfig(port=0, auth_secret=secret, node_id="A"), bus_a, storage=storage
        )
        b = NetworkProtocol(
            NetworkConfig(port=0, auth_secret=secret, node_id="B"), bus_b, storage=storage
        )
        async with a, b:
            await b.register_agent("remote_cfo")
            await bus_b.subscribe("remote_cfo", None, got.put)
            msg = Message(
                message_type=MessageType.TASK,
                sender_id="ceo_agent",
                recipient_id="remote_cfo",
                content={"task": "forecast"},
            )
            # The producer span a sending node opens around the HTTP hop.
            with tel_a.on_publish(msg, ["remote_cfo"]):
                await a.send_message("ceo_agent", "remote_cfo", msg)
            arrived = await asyncio.wait_for(got.get(), 10)
            assert arrived.content == {"task": "forecast"}

            async def processed() -> bool:
                return any(s.name == "process remote_cfo" for s in exporter.get_finished_spans())

            await eventually(processed, 5.0)
    await storage.close()
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    process = _by_name(spans, "process remote_cfo")
    sent = [s for s in spans if s.name == "publish remote_cfo"]
    origin = min(sent, key=lambda s: s.start_time or 0)
    assert origin.parent is None  # the trace starts at node A
    chain = []
    node: ReadableSpan | None = process
    while node is not None:
        chain.append(node)
        node = by_id.get(node.parent.span_id) if node.parent is not None else None
    assert chain[-1] is origin, [s.name for s in chain]
    assert {s.context.trace_id for s in spans} == {origin.context.trace_id}


async def test_a_signed_message_keeps_the_trace_context_it_was_signed_with() -> None:
    provider, exporter = tracer()
    config = MessageBusConfig(broker_url="memory://", enable_tracing=True)
    tel = BusTelemetry(config, tracer_provider=provider)
    async with MessageBus(config, telemetry=tel) as bus:
        first = Message(message_type=MessageType.TASK, recipient_id="a")
        await bus.publish(first)
        upstream = first.metadata[TRACEPARENT_KEY]
        # As if it had been signed upstream and is now forwarded by this bus.
        forwarded = first.copy(message_id="f" * 32, recipient_id="b")
        forwarded.metadata["aos.signature"] = "c2lnbmVk"
        await bus.publish(forwarded)
        assert forwarded.metadata[TRACEPARENT_KEY] == upstream
    spans = exporter.get_finished_spans()
    origin = _by_name(spans, "publish a")
    again = _by_name(spans, "publish b")
    assert again.parent is not None and again.parent.span_id == origin.context.span_id


async def test_batched_counts_stay_exact_per_type_in_a_mixed_batch() -> None:
    """Batched counting groups runs of one type; interleaved types are still counted apart."""
    config = MessageBusConfig(broker_url="memory://", enable_metrics=True, poll_interval=0.01)
    async with MessageBus(config) as bus:
        tel = bus.telemetry
        assert isinstance(tel, BusTelemetry)
        kinds = [
            MessageType.TASK,
            MessageType.TASK,
            MessageType.COMMAND,
            MessageType.TASK,
            MessageType.COMMAND,
            MessageType.COMMAND,
            MessageType.TASK,
        ]
        for kind in kinds:
            await bus.publish(Message(message_type=kind, sender_id="t", recipient_id="mixed"))
        handler, done = handler_until(len(kinds))
        await bus.subscribe("mixed", [MessageType.TASK, MessageType.COMMAND], handler)
        await asyncio.wait_for(done.wait(), 5)

        async def acked() -> bool:
            return (
                tel.series_value("mixed", "task", "acked")
                + tel.series_value("mixed", "command", "acked")
            ) == len(kinds)

        await eventually(acked, 5.0)
        assert tel.series_value("mixed", "task", "acked") == 4
        assert tel.series_value("mixed", "command", "acked") == 3
        assert tel.series_value("mixed", "task", "delivered") == 4
        assert tel.series_value("mixed", "command", "delivered") == 3


def test_the_old_import_path_still_names_every_public_name() -> None:
    """``observability.telemetry`` is the front the CLI, the dashboard and users import."""
    from AgentOperatingSystem.messaging.observability import bus_telemetry, tracing
    from AgentOperatingSystem.messaging.observability import metrics as metrics_module

    assert front.BusTelemetry is BusTelemetry
    assert front._MetricsOn is bus_telemetry.MetricsOn
    assert front.install_metrics is install_metrics
    assert front.metrics is metrics_module.metrics is metrics
    assert front.MetricsRegistry is MetricsRegistry
    assert front.extract_trace_context is tracing.extract_trace_context
    for name in front.__all__:
        assert getattr(front, name) is not None, name
