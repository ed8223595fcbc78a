"""The CloudEvents HTTP binding on a node (``POST /aos/v1/agents/{agent_id}/events``): a
foreign producer's event, in binary, structured or batched mode, reaches the handler of the
agent hosted there; bad input is refused with our errors and nothing is published; the
bearer token is enforced."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.config.network import NetworkConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.codec.envelope import encode
from AgentOperatingSystem.messaging.errors import ConfigurationError
from AgentOperatingSystem.messaging.network.cloudevents import foreign_message_id
from AgentOperatingSystem.messaging.network.node import NetworkProtocol
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.network.nodes import cfg, inbox, memory_bus, next_message
from tests.support.waiting import eventually

TOKEN = "webhook-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AGENT = "billing"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


@dataclass
class Node:
    """A started node hosting :data:`AGENT`, with the agent's inbox."""

    node: NetworkProtocol
    bus: MessageBus
    inbox: asyncio.Queue[Message]

    @property
    def events_url(self) -> str:
        return f"{self.node.url}/aos/v1/agents/{AGENT}/events"


def _bus(engine: str, tmp_path: Path) -> MessageBus:
    if engine == "memory":
        return memory_bus()
    return MessageBus(MessageBusConfig(broker_url=f"sqlite:///{tmp_path / 'bus.db'}"))


async def _node(bus: MessageBus, config: NetworkConfig) -> AsyncIterator[Node]:
    async with NetworkProtocol(config, bus) as node:
        q = await inbox(bus, AGENT)
        await node.register_agent(AGENT)
        yield Node(node, bus, q)


@pytest.fixture(params=["memory", "sqlite"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    """A node with the webhook token, on the memory engine and on SQLite."""
    async with _bus(request.param, tmp_path) as bus:
        async for n in _node(bus, cfg(cloudevents_token=TOKEN, max_body_bytes=4096)):
            yield n


@pytest.fixture
async def mem() -> AsyncIterator[Node]:
    """A node with the webhook token on the memory engine."""
    async with memory_bus() as bus:
        async for n in _node(bus, cfg(cloudevents_token=TOKEN, max_body_bytes=4096)):
            yield n


async def post(
    url: str, body: bytes, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, JSON answer, headers)`` of a POST."""
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=body, headers=headers or {}, **kw) as resp:
            text = await resp.read()
            return resp.status, json.loads(text) if text else {}, dict(resp.headers)


def structured(**fields: Any) -> bytes:
    event = {"specversion": "1.0", "id": "e-1", "source": "https://shop.example/orders"}
    event["type"] = "com.example.order.created"
    event.update(fields)
    return json.dumps({k: v for k, v in event.items() if v is not None}).encode()


def binary_headers(**attributes: str) -> dict[str, str]:
    base = {"specversion": "1.0", "id": "b-1", "source": "/github/acme", "type": "push"}
    base.update(attributes)
    return {f"ce-{k}": v for k, v in base.items()} | AUTH


# ----------------------------------------------------------------------- reaching a handler


async def test_a_binary_mode_event_reaches_the_agents_handler(served: Node) -> None:
    headers = binary_headers(type="com.github.push", subject="main", note="caf%C3%A9 50%25")
    headers["Content-Type"] = "application/json; charset=utf-8"
    status, answer, _ = await post(served.events_url, b'{"ref": "refs/heads/main"}', headers)
    assert (status, answer) == (202, {"accepted": True, "duplicate": False})
    msg = await next_message(served.inbox)
    assert msg.message_type is MessageType.EVENT
    assert msg.content == {"type": "com.github.push", "data": {"ref": "refs/heads/main"}}
    assert (msg.sender_id, msg.recipient_id) == ("/github/acme", AGENT)
    assert msg.message_id == foreign_message_id("/github/acme", "b-1")
    attrs = msg.metadata["cloudevents"]
    assert attrs["type"] == "com.github.push" and attrs["id"] == "b-1"
    assert attrs["subject"] == "main" and attrs["note"] == "café 50%"  # percent-decoded
    assert attrs["datacontenttype"] == "application/json; charset=utf-8"


async def test_binary_mode_text_and_opaque_data(mem: Node) -> None:
    headers = binary_headers(id="t-1") | {"Content-Type": "text/plain"}
    assert (await post(mem.events_url, "héllo".encode(), headers))[0] == 202
    assert (await next_message(mem.inbox)).content == {"type": "push", "data": "héllo"}
    headers = binary_headers(id="t-2") | {"Content-Type": "image/png"}
    assert (await post(mem.events_url, b"\x89PNG", headers))[0] == 202
    assert (await next_message(mem.inbox)).content == {"type": "push", "data_base64": "iVBORw=="}
    assert (await post(mem.events_url, b"", binary_headers(id="t-3")))[0] == 202
    assert (await next_message(mem.inbox)).content == {"type": "push"}  # no data


async def test_a_structured_mode_event_reaches_the_agents_handler(served: Node) -> None:
    body = structured(data="order 42 created", time="2026-01-02T03:04:05z")
    headers = {"Content-Type": f"{STRUCTURED}; charset=UTF-8"} | AUTH
    status, answer, _ = await post(served.events_url, body, headers)
    assert (status, answer) == (202, {"accepted": True, "duplicate": False})
    msg = await next_message(served.inbox)
    assert msg.message_type is MessageType.EVENT
    assert msg.content == {"type": "com.example.order.created", "data": "order 42 created"}
    assert msg.sender_id == "https://shop.example/orders" and msg.recipient_id == AGENT
    assert msg.metadata["cloudevents"]["type"] == "com.example.order.created"
    assert msg.timestamp.year == 2026
    # an aos.<type> event becomes that message type, its object data the content
    body = structured(id="e-2", type="aos.task", data={"task": "invoice", "n": 3})
    assert (await post(served.events_url, body, {"Content-Type": STRUCTURED} | AUTH))[0] == 202
    msg = await next_message(served.inbox)
    assert msg.message_type is MessageType.TASK and msg.content == {"task": "invoice", "n": 3}


async def test_an_aos_envelope_in_structured_mode_is_read_strictly(mem: Node) -> None:
    own = encode(Message(sender_id="cfo", recipient_id=AGENT, content={"q": 1}))
    headers = {"Content-Type": STRUCTURED} | AUTH
    assert (await post(mem.events_url, own, headers))[0] == 202
    msg = await next_message(mem.inbox)
    assert (msg.sender_id, msg.content, msg.message_type) == (
        "cfo",
        {"q": 1},
        MessageType.NOTIFICATION,
    )
    elsewhere = encode(Message(sender_id="cfo", recipient_id="payroll", content={}))
    status, answer, _ = await post(mem.events_url, elsewhere, headers)
    assert status == 400 and "payroll" in answer["error"]["message"]
    assert await mem.bus.queue_depth(AGENT) == 0


async def test_a_redelivered_event_is_delivered_once_and_ids_of_two_sources_do_not_collide(
    served: Node,
) -> None:
    headers = {"Content-Type": STRUCTURED} | AUTH
    body = structured(data={"n": 1})
    assert (await post(served.events_url, body, headers))[:2] == (
        202,
        {"accepted": True, "duplicate": False},
    )
    first = await next_message(served.inbox)
    assert (await post(served.events_url, body, headers))[:2] == (
        202,
        {"accepted": True, "duplicate": True},
    )
    other = structured(source="https://other.example", data={"n": 2})  # same id "e-1"
    assert (await post(served.events_url, other, headers))[1]["duplicate"] is False
    second = await next_message(served.inbox)
    assert first.content["data"] == {"n": 1} and second.content["data"] == {"n": 2}
    assert first.message_id != second.message_id
    assert served.inbox.empty()


async def test_a_batch_is_published_whole_or_refused_whole(served: Node) -> None:
    headers = {"Content-Type": BATCH} | AUTH
    events = [json.loads(structured(id=f"x-{i}", data={"i": i})) for i in range(3)]
    status, answer, _ = await post(served.events_url, json.dumps(events).encode(), headers)
    assert status == 202 and answer["accepted"] is True
    assert [r["status"] for r in answer["results"]] == [202, 202, 202]
    got = [await next_message(served.inbox) for _ in range(3)]
    assert sorted(m.content["data"]["i"] for m in got) == [0, 1, 2]
    bad = [*events[:2], {"specversion": "1.0", "id": "y"}]  # no source, no type
    status, answer, _ = await post(served.events_url, json.dumps(bad).encode(), headers)
    assert status == 400 and answer["error"]["message"].startswith("event 2 of the batch")
    status, answer, _ = await post(served.events_url, b'{"not": "a list"}', headers)
    assert status == 400
    assert await served.bus.queue_depth(AGENT) == 0 and served.inbox.empty()


async def test_events_made_by_the_cloudevents_sdk_reach_the_handler(served: Node) -> None:
    """The official SDK as the foreign producer, both content modes."""
    attributes = {"specversion": "1.0", "source": "urn:sdk:producer", "type": "sdk.made"}
    event = CloudEvent({**attributes, "id": "s-1", "subject": "ü x"}, {"amount": 12})
    http = to_binary_event(event)  # no Content-Type: the SDK leaves datacontenttype out
    async with aiohttp.ClientSession() as s:
        async with s.post(
            served.events_url,
            data=http.body,
            headers={**http.headers, **AUTH},
            skip_auto_headers=["Content-Type"],
        ) as resp:
            assert resp.status == 202
    msg = await next_message(served.inbox)
    assert msg.content == {"type": "sdk.made", "data": {"amount": 12}}
    assert msg.metadata["cloudevents"]["subject"] == "ü x"
    assert "datacontenttype" not in msg.metadata["cloudevents"]
    event = CloudEvent({**attributes, "id": "s-2", "datacontenttype": "text/plain"}, "hi")
    http = to_structured_event(event)
    status, _, _ = await post(served.events_url, http.body, {**http.headers, **AUTH})
    assert status == 202
    msg = await next_message(served.inbox)
    assert msg.content == {"type": "sdk.made", "data": "hi"}
    assert msg.message_id == foreign_message_id("urn:sdk:producer", "s-2")


async def test_a_batch_refused_midway_says_which_events_are_in_and_a_resend_is_safe() -> None:
    async with memory_bus(max_queue_size=2) as bus:
        async with NetworkProtocol(cfg(cloudevents_token=TOKEN), bus) as node:
            await node.register_agent(AGENT)  # nobody consumes yet: the queue fills
            url = f"{node.url}/aos/v1/agents/{AGENT}/events"
            events = [json.loads(structured(id=f"q-{i}", data={"i": i})) for i in range(3)]
            body, headers = json.dumps(events).encode(), {"Content-Type": BATCH} | AUTH
            status, answer, _ = await post(url, body, headers)
            assert status == 503 and answer["error"]["code"] == "queue_full"
            assert [r["status"] for r in answer["results"]] == [202, 202, 503]
            assert [r["id"] for r in answer["results"]] == ["q-0", "q-1", "q-2"]
            q = await inbox(bus, AGENT)
            got = [await next_message(q), await next_message(q)]
            await eventually(lambda: _depth_is(bus, 0), what="the two delivered messages acked")
            status, answer, _ = await post(url, body, headers)  # the sender retries
            assert status == 202
            assert [r["duplicate"] for r in answer["results"]] == [True, True, False]
            got.append(await next_message(q))
            assert [m.content["data"]["i"] for m in got] == [0, 1, 2]
            assert q.empty()


async def _depth_is(bus: MessageBus, depth: int) -> bool:
    return await bus.queue_depth(AGENT) == depth


async def test_an_agent_id_with_any_characters_is_one_path_segment() -> None:
    agent = "CFO agent/ü"
    async with memory_bus() as bus:
        async with NetworkProtocol(cfg(cloudevents_token=TOKEN), bus) as node:
            q = await inbox(bus, agent)
            await node.register_agent(agent)
            url = f"{node.url}/aos/v1/agents/{quote(agent, safe='')}/events"
            status, _, _ = await post(url, structured(), {"Content-Type": STRUCTURED} | AUTH)
            assert status == 202
            assert (await next_message(q)).recipient_id == agent


# ----------------------------------------------------------------------------- refusals


async def test_bad_requests_get_our_errors_and_the_node_keeps_serving(served: Node) -> None:
    json_headers = {"Content-Type": STRUCTURED} | AUTH
    cases: list[tuple[int, str, bytes, dict[str, str]]] = [
        (400, "bad_request", b'{"ref": 1}', {"Content-Type": "application/json"} | AUTH),
        (400, "bad_request", b"{not json", json_headers),
        (400, "bad_request", b"[1, 2]", json_headers),
        (400, "bad_request", structured(type=None), json_headers),
        (400, "bad_request", structured(specversion="0.3"), json_headers),
        (400, "bad_request", structured(id=7), json_headers),
        (400, "bad_request", structured(data="x", data_base64="eA=="), json_headers),
        (400, "bad_request", b"{nope", binary_headers() | {"Content-Type": "application/json"}),
        (400, "bad_request", b"\xff\xfe", binary_headers() | {"Content-Type": "text/plain"}),
        (400, "bad_request", b"", binary_headers(source="%FF")),
        (400, "bad_request", b"", binary_headers() | {"ce-bad_name": "x"}),
        (400, "bad_request", b"", binary_headers(time="yesterday")),
        (
            415,
            "unsupported_media_type",
            b"<e/>",
            {"Content-Type": "application/cloudevents+xml"} | AUTH,
        ),
        (413, "payload_too_large", b"x" * 5000, json_headers),
        (413, "payload_too_large", b"x" * 5000, binary_headers()),
    ]
    for status, code, body, headers in cases:
        got, answer, _ = await post(served.events_url, body, headers)
        assert (got, answer["error"]["code"]) == (status, code), (body[:40], headers)
        assert answer["error"]["message"]
    assert await served.bus.queue_depth(AGENT) == 0 and served.inbox.empty()
    # still serving
    assert (await post(served.events_url, structured(data={"ok": 1}), json_headers))[0] == 202
    assert (await next_message(served.inbox)).content["data"] == {"ok": 1}


async def test_an_unknown_agent_is_404(mem: Node) -> None:
    url = f"{mem.node.url}/aos/v1/agents/nobody/events"
    status, answer, _ = await post(url, structured(), {"Content-Type": STRUCTURED} | AUTH)
    assert status == 404 and answer["error"]["code"] == "unknown_agent"
    assert "nobody" in answer["error"]["message"]
    # without the token the caller learns nothing about agents
    assert (await post(url, structured(), {"Content-Type": STRUCTURED}))[0] == 401


# -------------------------------------------------------------------------- authentication


async def test_the_bearer_token_is_enforced(mem: Node) -> None:
    body, ctype = structured(data={"n": 1}), {"Content-Type": STRUCTURED}
    for headers in (
        ctype,
        ctype | {"Authorization": "Bearer wrong-token-0123456789"},
        ctype | {"Authorization": f"Basic {TOKEN}"},
    ):
        status, answer, got = await post(mem.events_url, body, headers)
        assert (status, answer["error"]["code"]) == (401, "unauthorized"), headers
        assert got["WWW-Authenticate"] == "Bearer"
    status, _, _ = await post(mem.events_url, body, ctype, params={"access_token": "nope"})
    assert status == 401
    assert await mem.bus.queue_depth(AGENT) == 0
    # the query parameter, for senders that cannot set headers
    status, _, _ = await post(mem.events_url, body, ctype, params={"access_token": TOKEN})
    assert status == 202
    assert (await next_message(mem.inbox)).content["data"] == {"n": 1}


async def test_without_a_token_the_route_is_closed_unless_unsigned_is_allowed() -> None:
    async with memory_bus() as bus:
        async for n in _node(bus, cfg()):
            status, answer, _ = await post(n.events_url, structured(), {"Content-Type": STRUCTURED})
            assert status == 401 and "cloudevents_token" in answer["error"]["message"]
    async with memory_bus() as bus:
        async for n in _node(bus, cfg(auth_secret=None, allow_unsigned=True)):
            status, _, _ = await post(n.events_url, structured(), {"Content-Type": STRUCTURED})
            assert status == 202
            assert (await next_message(n.inbox)).sender_id == "https://shop.example/orders"
    with pytest.raises(ConfigurationError, match="cloudevents_token"):
        NetworkConfig(cloudevents_token="short")


async def test_options_answers_the_delivery_probe_and_the_webhook_handshake(mem: Node) -> None:
    async with aiohttp.ClientSession() as s:
        origin = {"WebHook-Request-Origin": "eventemitter.example.com"}
        async with s.options(mem.events_url, headers=origin) as resp:
            assert resp.status == 200
            assert resp.headers["Allow"] == "OPTIONS, POST"
            assert resp.headers["WebHook-Allowed-Origin"] == "eventemitter.example.com"
        async with s.options(mem.events_url) as resp:
            assert resp.status == 200 and "WebHook-Allowed-Origin" not in resp.headers
