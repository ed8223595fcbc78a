"""A2A push notifications through the durable bus queue: the config methods (a2a-sdk
client), a receiver that is down for the first three attempts still gets every update
once each (by idempotency key, with the config's token and authentication), and one that
never comes up leaves the updates in the dead-letter queue with a reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from a2a.types.a2a_pb2 import (
    AuthenticationInfo,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    ListTaskPushNotificationConfigsRequest,
    TaskPushNotificationConfig,
)
from a2a.utils.errors import TaskNotFoundError
from aiohttp import web

from AgentOperatingSystem.messaging.metadata import DLQ_ERROR, DLQ_REASON
from AgentOperatingSystem.messaging.network.a2a.push import PUSH_QUEUE
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.network.a2a.support import Node, rpc, running_node, sdk_client, user_message
from tests.support.ports import free_port
from tests.support.waiting import eventually

PUSH = {"a2a_push_notifications": True, "a2a_push_max_attempts": 5, "a2a_push_retry_delay": 0.01}


async def echo(msg: Message) -> dict[str, Any]:
    return {"text": f"echo: {msg.content['text']}"}


@asynccontextmanager
async def pushing_node(**config: Any) -> AsyncIterator[Node]:
    async with running_node(**{**PUSH, **config}) as node:
        await node.bus.subscribe("echo", [MessageType.QUERY], echo)
        await node.protocol.register_agent("echo")
        yield node


class Receiver:
    """A webhook that refuses its first ``down`` requests (503), then keeps each update
    once by its idempotency key."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.attempts = 0
        self.kept: dict[str, Any] = {}
        self.repeats = 0
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.down:
            return web.Response(status=503)
        key = request.headers["Idempotency-Key"]
        self.headers.append(dict(request.headers))
        if key in self.kept:
            self.repeats += 1
        else:
            self.kept[key] = await request.json()
        return web.Response(status=200)


@asynccontextmanager
async def receiver(down: int) -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver(down)
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield r, f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


def send_with_push(url: str, text: str) -> dict[str, Any]:
    config = {
        "url": url,
        "id": "hook-1",
        "token": "tok-123",
        "authentication": {"scheme": "Bearer", "credentials": "push-secret"},
    }
    params = {
        "message": {"messageId": f"m-{text}", "role": "ROLE_USER", "parts": [{"text": text}]},
        "configuration": {"taskPushNotificationConfig": config},
    }
    return {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": params}


async def test_push_config_methods_with_the_sdk() -> None:
    async with pushing_node() as node:
        async with sdk_client(node.agent_url("echo")) as client:
            (event,) = [e async for e in client.send_message(user_message("hi"))]
            task_id = event.task.id
            made = await client.create_task_push_notification_config(
                TaskPushNotificationConfig(
                    task_id=task_id,
                    id="c1",
                    url="https://example.com/hook",
                    token="t",
                    authentication=AuthenticationInfo(scheme="Bearer", credentials="x"),
                )
            )
            assert (made.id, made.task_id, made.url) == ("c1", task_id, "https://example.com/hook")
            got = await client.get_task_push_notification_config(
                GetTaskPushNotificationConfigRequest(task_id=task_id, id="c1")
            )
            assert got.authentication.scheme == "Bearer" and got.token == "t"
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task_id)
            )
            assert [c.id for c in listed.configs] == ["c1"]
            await client.delete_task_push_notification_config(
                DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="c1")
            )
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task_id)
            )
            assert list(listed.configs) == []
            with pytest.raises(TaskNotFoundError):
                await client.get_task_push_notification_config(
                    GetTaskPushNotificationConfigRequest(task_id="no-such-task", id="c1")
                )
        bad = {"taskId": task_id, "url": "ftp://example.com"}
        out = await rpc(
            node.agent_url("echo"),
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "CreateTaskPushNotificationConfig",
                "params": bad,
            },
        )
        assert out["error"]["code"] == -32602


async def test_a_receiver_down_for_three_attempts_gets_every_update_once() -> None:
    async with receiver(down=3) as (hook, url), pushing_node() as node:
        out = await rpc(node.agent_url("echo"), send_with_push(url, "hello"))
        task = out["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        await eventually(lambda: len(hook.kept) == 3, what="three updates delivered")
        bodies = list(hook.kept.values())
        kinds = [next(iter(b)) for b in bodies]
        assert sorted(kinds) == ["artifactUpdate", "statusUpdate", "statusUpdate"]
        states = {b["statusUpdate"]["status"]["state"] for b in bodies if "statusUpdate" in b}
        assert states == {"TASK_STATE_WORKING", "TASK_STATE_COMPLETED"}
        assert all(b[next(iter(b))]["taskId"] == task["id"] for b in bodies)
        assert hook.attempts >= 6 and hook.repeats == 0
        h = hook.headers[0]
        assert h["X-A2A-Notification-Token"] == "tok-123"
        assert h["Authorization"] == "Bearer push-secret"
        await asyncio.sleep(0)  # nothing else is pending
        assert await node.bus.dead_letter_depth(PUSH_QUEUE) == 0


async def test_a_receiver_that_never_comes_up_leaves_the_updates_in_the_dlq() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    async with pushing_node(a2a_push_max_attempts=3) as node:
        out = await rpc(node.agent_url("echo"), send_with_push(url, "lost"))
        assert out["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"

        async def dead() -> bool:
            return await node.bus.dead_letter_depth(PUSH_QUEUE) == 3

        await eventually(dead, what="three updates dead-lettered")
        letters = await node.bus.get_dead_letter_messages(PUSH_QUEUE)
        assert {m.metadata[DLQ_REASON] for m in letters} == {"max_attempts"}
        assert all("unreachable" in m.metadata[DLQ_ERROR] for m in letters)
        assert len({m.content["key"] for m in letters}) == 3


async def test_updates_wait_in_the_queue_across_a_node_restart(tmp_path: Path) -> None:
    files: dict[str, Any] = {
        "broker_url": f"sqlite:///{tmp_path}/bus.db",
        "storage_url": f"sqlite:///{tmp_path}/store.db",
    }
    async with receiver(down=10**6) as (hook, url):
        async with pushing_node(**files, a2a_push_max_attempts=50) as node:
            out = await rpc(node.agent_url("echo"), send_with_push(url, "later"))
            task_id = out["result"]["task"]["id"]
            await eventually(lambda: hook.attempts >= 3, what="the receiver refusing")
        assert hook.kept == {}
        hook.down = 0  # the receiver comes up while the node is down
        async with pushing_node(**files, a2a_push_max_attempts=50):
            await eventually(lambda: len(hook.kept) == 3, what="every update, after the restart")
        assert hook.repeats == 0
        assert {b[next(iter(b))]["taskId"] for b in hook.kept.values()} == {task_id}


async def test_push_is_off_unless_configured() -> None:
    async with running_node() as node:
        await node.bus.subscribe("echo", [MessageType.QUERY], echo)
        await node.protocol.register_agent("echo")
        out = await rpc(node.agent_url("echo"), send_with_push("https://example.com/h", "x"))
        assert out["error"]["code"] == -32003
