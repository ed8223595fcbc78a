"""Sends to one node coalesced into CloudEvents batches while requests to it are in flight:
each send still gets its own result, its own error and, on failure, its own dead letter;
the node's batch endpoint rejects bad input per message or as a whole, and keeps serving."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from AgentOperatingSystem.messaging.codec.envelope import encode
from AgentOperatingSystem.messaging.errors import (
    AgentUnreachableError,
    UnknownAgentError,
)
from AgentOperatingSystem.messaging.network.auth import signature_headers
from AgentOperatingSystem.messaging.network.node import NetworkProtocol
from AgentOperatingSystem.messaging.network.wire import CLOUDEVENTS_BATCH, MAX_BATCH_MESSAGES
from AgentOperatingSystem.messaging.types import Message
from AgentOperatingSystem.storage.manager import StorageManager
from tests.network.nodes import SECRET, Pair, cfg, inbox, memory_bus, next_message
from tests.support.ports import free_port
from tests.support.waiting import eventually

PATH = "/aos/v1/messages"


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """Two nodes sharing a registry; A coalesces as soon as one request is in flight."""
    storage = StorageManager("memory://")
    async with memory_bus() as bus_a, memory_bus() as bus_b:
        a = NetworkProtocol(cfg(node_id="A", batch_after=1, max_batch=8), bus_a, storage=storage)
        b = NetworkProtocol(cfg(node_id="B"), bus_b, storage=storage)
        async with a, b:
            yield Pair(a, b, bus_a, bus_b)
    await storage.close()


async def post_batch(
    url: str, body: bytes, *, signed: bool = True, content_type: str = CLOUDEVENTS_BATCH
) -> tuple[int, Any]:
    headers = {"Content-Type": content_type}
    if signed:
        headers.update(signature_headers(SECRET.encode(), "POST", PATH, body, time.time()))
    async with aiohttp.ClientSession() as session:
        data: Any = io.BytesIO(body) if len(body) > 1 << 20 else body  # aiohttp's advice
        async with session.post(url + PATH, data=data, headers=headers) as resp:
            return resp.status, await resp.json()


def batch_of(*messages: Message) -> bytes:
    return b"[" + b",".join(encode(m) for m in messages) + b"]"


async def test_concurrent_sends_share_requests_and_each_gets_its_own_receipt(pair: Pair) -> None:
    q = await inbox(pair.bus_b, "sink")
    await pair.b.register_agent("sink")
    before = pair.a.pool.requests_sent
    msgs = [Message(sender_id="me", recipient_id="sink", content={"i": i}) for i in range(40)]
    receipts = await asyncio.gather(*(pair.a.send_message("me", "sink", m) for m in msgs))
    assert [r.message_id for r in receipts] == [m.message_id for m in msgs]
    assert all(not r.duplicate and r.address == pair.b.url for r in receipts)
    requests = pair.a.pool.requests_sent - before
    assert requests <= 40 // 8 + 2  # batches of up to 8 after the first single send
    got = sorted([(await next_message(q)).content["i"] for _ in range(40)])
    assert got == list(range(40))  # each exactly once
    assert q.empty()


async def test_one_bad_message_in_a_batch_fails_alone_and_is_dead_lettered(pair: Pair) -> None:
    q = await inbox(pair.bus_b, "sink")
    await pair.b.register_agent("sink")
    # addressed to B, which hosts no "ghost": B answers 404 for that message only

    def send(i: int, target: str) -> Any:
        if target == "sink":
            return pair.a.send_message("me", target, {"i": i})
        ghost = Message(sender_id="me", recipient_id=target, content={"i": i})
        return pair.a.pool.deliver(ghost, address=pair.b.url)

    targets = ["sink", "sink", "ghost", "sink", "sink"]
    outcomes = await asyncio.gather(
        *(send(i, t) for i, t in enumerate(targets)), return_exceptions=True
    )
    assert isinstance(outcomes[2], UnknownAgentError)
    assert all(not isinstance(o, BaseException) for i, o in enumerate(outcomes) if i != 2)
    assert sorted([(await next_message(q)).content["i"] for _ in range(4)]) == [0, 1, 3, 4]
    (failed,) = await pair.a.get_failed_messages("me")
    assert failed.recipient_id == "ghost" and failed.content == {"i": 2}
    assert failed.metadata["aos.dead_letter.reason"] == "rejected"


async def test_a_batch_to_a_node_that_is_down_fails_every_send_and_loses_none() -> None:
    storage = StorageManager("memory://")
    async with memory_bus() as bus:
        node = NetworkProtocol(
            cfg(node_id="A", batch_after=1, max_batch=8, max_retries=0), bus, storage=storage
        )
        async with node:
            await node.register_agent("far", f"http://127.0.0.1:{free_port()}")
            outcomes = await asyncio.gather(
                *(node.send_message("me", "far", {"i": i}) for i in range(6)),
                return_exceptions=True,
            )
            assert all(isinstance(o, AgentUnreachableError) for o in outcomes)
            failed = await node.get_failed_messages("me")
            assert sorted(m.content["i"] for m in failed) == list(range(6))
            assert {m.metadata["aos.dead_letter.reason"] for m in failed} <= {
                "unreachable",
                "circuit_open",
            }
    await storage.close()


async def test_a_cancelled_batch_leaves_the_others_to_a_new_request(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message 0 goes alone; 1, 2 and 3 wait and go as one batch, led by 1's send, which is
    cancelled while node B holds that batch. 2 and 3 go again in a new request and arrive;
    B then finishes the first batch: 1 arrives, and 2 and 3 are duplicates there."""
    q = await inbox(pair.bus_b, "sink")
    await pair.b.register_agent("sink")
    admit = pair.b._admit
    loop = asyncio.get_running_loop()
    entered = [loop.create_future() for _ in range(2)]  # B holds: message 0; then message 1
    release = [asyncio.Event(), asyncio.Event()]
    outcomes: list[tuple[str, bool]] = []  # (message id, duplicate) of each message B admits
    calls = 0

    async def held_admit(envelope: Any) -> Any:
        nonlocal calls
        n, calls = calls, calls + 1
        if n < 2:
            entered[n].set_result(None)
            await release[n].wait()
        outcome = await admit(envelope)
        event_id = envelope.get("id") if isinstance(envelope, dict) else None
        outcomes.append((event_id or "lone", outcome[3]))
        return outcome

    monkeypatch.setattr(pair.b, "_admit", held_admit)
    msgs = [Message(sender_id="me", recipient_id="sink", content={"i": i}) for i in range(4)]
    first = asyncio.create_task(pair.a.send_message("me", "sink", msgs[0]))
    await entered[0]  # 0's request is in flight: the next sends wait in the lane
    leader = asyncio.create_task(pair.a.send_message("me", "sink", msgs[1]))
    await eventually(lambda: pair.a.pool._lanes.waiting(pair.b.url) == 1, what="1 waiting")
    others = [asyncio.create_task(pair.a.send_message("me", "sink", m)) for m in msgs[2:]]
    await eventually(lambda: pair.a.pool._lanes.waiting(pair.b.url) == 3, what="3 waiting")
    release[0].set()  # 0's request completes: the leader sends [1, 2, 3] ...
    assert (await first).message_id == msgs[0].message_id
    await entered[1]  # ... and B holds that batch at message 1
    leader.cancel()  # the leader is cancelled while its request is in flight
    with pytest.raises(asyncio.CancelledError):
        await leader
    receipts = await asyncio.gather(*others)  # 2 and 3 went again, in a new request
    assert [r.message_id for r in receipts] == [m.message_id for m in msgs[2:]]
    assert not any(r.duplicate for r in receipts)
    release[1].set()  # B finishes the cancelled batch (its client has gone)
    await eventually(lambda: len(outcomes) == 6, what="B to admit the first batch")
    ids = [m.message_id for m in msgs]
    assert outcomes == [
        ("lone", False),  # 0, alone
        (ids[2], False),  # the new request: 2 and 3
        (ids[3], False),
        (ids[1], False),  # the cancelled batch: 1 is new, 2 and 3 are duplicates
        (ids[2], True),
        (ids[3], True),
    ]
    got = sorted([(await next_message(q)).content["i"] for _ in range(4)])
    assert got == [0, 1, 2, 3]  # each once: B published exactly these four


async def test_the_batch_endpoint_answers_each_message(pair: Pair) -> None:
    q = await inbox(pair.bus_b, "sink")
    await pair.b.register_agent("sink")
    good = Message(sender_id="me", recipient_id="sink", content={"n": 1})
    elsewhere = Message(sender_id="me", recipient_id="nobody", content={"n": 2})
    body = (
        b"["
        + encode(good)
        + b","
        + encode(elsewhere)
        + b',{"specversion":"1.0","id":"x"},7,'
        + encode(good)
        + b"]"
    )
    status, answer = await post_batch(pair.b.url, body)
    assert status == 200
    results = answer["results"]
    assert [r["status"] for r in results] == [202, 404, 400, 400, 202]
    assert [r["id"] for r in results] == [
        good.message_id,
        elsewhere.message_id,
        "x",
        None,
        good.message_id,
    ]
    assert results[0]["duplicate"] is False and results[4]["duplicate"] is True
    assert results[1]["error"]["code"] == "unknown_agent"
    assert results[2]["error"]["code"] == "bad_request"
    assert (await next_message(q)).content == {"n": 1}
    # FIFO: had the repeated message been enqueued, it would arrive before the marker
    await pair.bus_b.publish(Message(sender_id="me", recipient_id="sink", content={"marker": 1}))
    assert (await next_message(q)).content == {"marker": 1}


@pytest.mark.parametrize(
    ("body", "signed", "status", "code"),
    [
        (b'{"not": "an array"}', True, 400, "bad_request"),
        (b"[1, 2", True, 400, "bad_request"),
        (b"[]", False, 401, "unauthorized"),
        (b"[" + b",".join([b"{}"] * (MAX_BATCH_MESSAGES + 1)) + b"]", True, 413, None),
        (b"[" + b"0," * 600_000 + b"0]", True, 413, "payload_too_large"),
    ],
    ids=["object", "truncated", "unsigned", "too_many", "too_large"],
)
async def test_the_batch_endpoint_refuses_bad_batches_and_keeps_serving(
    pair: Pair, body: bytes, signed: bool, status: int, code: str | None
) -> None:
    status_got, answer = await post_batch(pair.b.url, body, signed=signed)
    assert status_got == status
    if code is not None:
        assert answer["error"]["code"] == code
    q = await inbox(pair.bus_b, "sink")
    await pair.b.register_agent("sink")
    await pair.a.send_message("me", "sink", {"after": True})
    assert (await next_message(q)).content == {"after": True}


async def test_a_batch_answer_is_json_with_one_result_per_message(pair: Pair) -> None:
    await pair.b.register_agent("sink")
    msgs = [Message(sender_id="me", recipient_id="sink", content={"i": i}) for i in range(3)]
    status, answer = await post_batch(pair.b.url, batch_of(*msgs))
    assert status == 200
    assert json.loads(json.dumps(answer)) == {
        "results": [{"id": m.message_id, "status": 202, "duplicate": False} for m in msgs]
    }
