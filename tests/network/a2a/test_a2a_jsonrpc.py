"""JSON-RPC 2.0 as written, on the A2A endpoint: notifications are run and never answered,
ids of invalid types are refused (-32600, not run), ids come back exactly as sent, batches
are answered request by request; ``A2A-Version`` negotiation; required fields."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.network.a2a.support import Node, rpc, rpc_raw, running_node
from tests.support.waiting import eventually


@pytest.fixture
async def node() -> AsyncIterator[tuple[Node, list[Message]]]:
    async with running_node() as n:
        seen: list[Message] = []

        async def echo(msg: Message) -> dict[str, Any]:
            seen.append(msg)
            return {"text": f"echo: {msg.content['text']}"}

        await n.bus.subscribe("echo", [MessageType.QUERY], echo)
        await n.protocol.register_agent("echo")
        yield n, seen


def send(text: str, **rpc_fields: Any) -> dict[str, Any]:
    params = {"message": {"messageId": f"m-{text}", "role": "ROLE_USER", "parts": [{"text": text}]}}
    return {"jsonrpc": "2.0", "method": "SendMessage", "params": params, **rpc_fields}


async def test_a_notification_is_run_and_not_answered(node: tuple[Node, list[Message]]) -> None:
    n, seen = node
    status, body = await rpc_raw(n.agent_url("echo"), send("quiet"))
    assert (status, body) == (204, b"")
    await eventually(lambda: [m.content["text"] for m in seen] == ["quiet"], what="the query")
    # a notification with an unknown method is not answered either
    status, body = await rpc_raw(n.agent_url("echo"), {"jsonrpc": "2.0", "method": "Nope"})
    assert (status, body) == (204, b"")


@pytest.mark.parametrize("bad_id", [True, False, [], [1], {}, {"bad": "type"}])
async def test_an_id_of_an_invalid_type_is_refused_and_not_run(
    node: tuple[Node, list[Message]], bad_id: Any
) -> None:
    n, seen = node
    out = await rpc(n.agent_url("echo"), send("never", id=bad_id))
    assert out["error"]["code"] == -32600 and out["id"] is None
    assert out["error"]["data"][0]["reason"] == "INVALID_REQUEST"
    assert seen == []


@pytest.mark.parametrize("good_id", [1.5, 7, -3, 0, "abc", "", None, 12345678901234567890])
async def test_ids_come_back_exactly_as_sent(
    node: tuple[Node, list[Message]], good_id: Any
) -> None:
    n, _ = node
    status, body = await rpc_raw(n.agent_url("echo"), send("hi", id=good_id))
    assert status == 200
    out = json.loads(body)
    assert out["id"] == good_id and type(out["id"]) is type(good_id)
    assert out["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
    if good_id == 1.5:
        assert b'"id": 1.5' in body or b'"id":1.5' in body


async def test_batches_are_answered_request_by_request(node: tuple[Node, list[Message]]) -> None:
    n, seen = node
    url = n.agent_url("echo")
    batch = [
        send("one", id=1),
        send("two"),  # a notification: run, no answer
        {"jsonrpc": "2.0", "id": "x", "method": "Teleport"},
        send("three", id={"no": 1}),
        42,
        {"jsonrpc": "2.0", "id": 5, "method": "GetTask", "params": {"id": "missing"}},
    ]
    out = await rpc(url, batch)
    assert [a["id"] for a in out] == [1, "x", None, None, 5]
    assert out[0]["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
    assert [a.get("error", {}).get("code") for a in out[1:]] == [-32601, -32600, -32600, -32001]
    await eventually(lambda: sorted(m.content["text"] for m in seen) == ["one", "two"])

    empty = await rpc(url, [])
    assert empty["error"]["code"] == -32600 and empty["id"] is None
    status, body = await rpc_raw(url, [send("four"), send("five")])
    assert (status, body) == (204, b"")
    stream = {"jsonrpc": "2.0", "id": 9, "method": "SendStreamingMessage", "params": {}}
    (refused,) = await rpc(url, [stream])
    assert refused["id"] == 9 and refused["error"]["code"] == -32600


async def test_invalid_requests_keep_their_id(node: tuple[Node, list[Message]]) -> None:
    n, _ = node
    url = n.agent_url("echo")
    out = await rpc(url, {"jsonrpc": "1.0", "id": 3, "method": "SendMessage"})
    assert (out["id"], out["error"]["code"]) == (3, -32600)
    out = await rpc(url, {"jsonrpc": "2.0", "id": 4})
    assert (out["id"], out["error"]["code"]) == (4, -32600)
    out = await rpc(url, b"[1, 2")
    assert (out["id"], out["error"]["code"]) == (None, -32700)


async def test_a2a_version_negotiation(node: tuple[Node, list[Message]]) -> None:
    n, seen = node
    url = n.agent_url("echo")
    out = await rpc(url, send("v", id=1), {"A2A-Version": "9.9"})
    err = out["error"]
    assert err["code"] == -32009 and out["id"] == 1
    assert err["data"][0]["reason"] == "VERSION_NOT_SUPPORTED"
    assert err["data"][0]["metadata"]["requestedVersion"] == "9.9"
    assert seen == []
    for version in ("1.0", "0.3", "1.0.2", ""):
        out = await rpc(url, send("v", id=2), {"A2A-Version": version})
        assert out["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED", version


async def test_required_fields_are_checked(node: tuple[Node, list[Message]]) -> None:
    n, seen = node
    url = n.agent_url("echo")
    no_id = {"message": {"role": "ROLE_USER", "parts": [{"text": "x"}]}}
    out = await rpc(url, {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": no_id})
    assert out["error"]["code"] == -32602 and "messageId" in out["error"]["message"]
    no_role = {"message": {"messageId": "m", "parts": [{"text": "x"}]}}
    out = await rpc(url, {"jsonrpc": "2.0", "id": 3, "method": "SendMessage", "params": no_role})
    assert out["error"]["code"] == -32602 and "role" in out["error"]["message"]
    no_parts = {"message": {"messageId": "m", "role": "ROLE_USER", "parts": []}}
    out = await rpc(url, {"jsonrpc": "2.0", "id": 2, "method": "SendMessage", "params": no_parts})
    assert out["error"]["code"] == -32602
    assert seen == []


async def test_push_notification_methods_say_not_supported(
    node: tuple[Node, list[Message]],
) -> None:
    n, _ = node
    for method in (
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/set",
    ):
        out = await rpc(n.agent_url("echo"), {"jsonrpc": "2.0", "id": 1, "method": method})
        assert out["error"]["code"] == -32003, method
        assert out["error"]["data"][0]["reason"] == "PUSH_NOTIFICATION_NOT_SUPPORTED"


async def test_output_modes_the_agent_cannot_give_are_refused(
    node: tuple[Node, list[Message]],
) -> None:
    n, seen = node
    url = n.agent_url("echo")
    request = send("fmt", id=1)
    request["params"]["configuration"] = {"acceptedOutputModes": ["image/png"]}
    out = await rpc(url, request)
    assert out["error"]["code"] == -32005
    assert out["error"]["data"][0]["reason"] == "CONTENT_TYPE_NOT_SUPPORTED"
    assert seen == []
    request["params"]["configuration"] = {"acceptedOutputModes": ["image/png", "text/plain"]}
    out = await rpc(url, request)
    assert out["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
