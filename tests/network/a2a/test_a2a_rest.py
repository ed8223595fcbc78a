"""The HTTP+JSON binding, with the a2a-sdk client on its REST transport: send, get, list,
cancel, stream, subscribe and push configs, at the agent's URL and (for the primary agent)
at the origin; errors as ``application/problem+json`` that the SDK maps to its errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.client import Client
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTasksRequest,
    SubscribeToTaskRequest,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError

from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.network.a2a.support import running_node, user_message


@asynccontextmanager
async def rest_client(url: str, *, streaming: bool = False) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(timeout=30) as hc:
        config = ClientConfig(
            streaming=streaming, httpx_client=hc, supported_protocol_bindings=["HTTP+JSON"]
        )
        client = await ClientFactory(config).create_from_url(url)
        try:
            yield client
        finally:
            await client.close()


async def test_the_sdk_over_http_json() -> None:
    release = asyncio.Event()

    async def agent(msg: Message) -> dict[str, Any]:
        if msg.content["text"] == "slow":
            await release.wait()
        return {"text": f"echo: {msg.content['text']}"}

    async with running_node(a2a_push_notifications=True) as node:
        await node.bus.subscribe("echo", [MessageType.QUERY], agent, max_concurrency=4)
        await node.protocol.register_agent("echo")
        async with rest_client(node.agent_url("echo")) as client:
            (event,) = [e async for e in client.send_message(user_message("hi"))]
            task = event.task
            assert task.status.state == TaskState.TASK_STATE_COMPLETED
            assert task.artifacts[0].parts[0].text == "echo: hi"
            got = await client.get_task(GetTaskRequest(id=task.id, history_length=1))
            assert got.id == task.id and len(got.history) == 1
            page = await client.list_tasks(ListTasksRequest(page_size=5))
            assert [t.id for t in page.tasks] == [task.id] and page.total_size == 1
            with pytest.raises(TaskNotFoundError):
                await client.get_task(GetTaskRequest(id="nope"))
            with pytest.raises(TaskNotCancelableError):
                await client.cancel_task(CancelTaskRequest(id=task.id))
            made = await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task.id, id="c1", url="https://example.com/h")
            )
            assert made.id == "c1"
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task.id)
            )
            assert [c.url for c in listed.configs] == ["https://example.com/h"]

            (event,) = [e async for e in client.send_message(user_message("slow", immediate=True))]
            slow_id = event.task.id
        async with rest_client(node.agent_url("echo"), streaming=True) as client:
            events = []
            async for e in client.subscribe(SubscribeToTaskRequest(id=slow_id)):
                events.append(e)
                if len(events) == 1:
                    release.set()
            assert events[0].task.id == slow_id
            assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
            streamed = [e async for e in client.send_message(user_message("live"))]
            assert streamed[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


async def test_http_json_at_the_origin_and_problem_details() -> None:
    async def echo(msg: Message) -> dict[str, Any]:
        return {"text": f"echo: {msg.content['text']}"}

    async with running_node() as node:
        await node.bus.subscribe("echo", [MessageType.QUERY], echo)
        await node.protocol.register_agent("echo")
        body = {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "x"}]}}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{node.url}/message:send", json=body) as resp:
                assert resp.status == 200
                task = (await resp.json())["task"]
            async with s.get(f"{node.agent_url('echo')}/tasks/{task['id']}") as resp:
                assert (await resp.json())["status"]["state"] == "TASK_STATE_COMPLETED"
            async with s.get(f"{node.url}/tasks/missing") as resp:
                assert resp.status == 404
                assert resp.content_type == "application/problem+json"
                p = await resp.json()
            assert p["status"] == 404 and p["title"] == "Task not found" and p["code"] == -32001
            assert p["type"].endswith("/task-not-found") and "missing" in p["detail"]
            assert p["error"]["details"][0]["reason"] == "TASK_NOT_FOUND"
            async with s.post(f"{node.url}/message:send", data=b"{nope") as resp:
                assert resp.status == 400 and (await resp.json())["code"] == -32700
            async with s.get(f"{node.url}/tasks?pageSize=0") as resp:
                assert resp.status == 400 and (await resp.json())["code"] == -32602
            headers = {"A2A-Version": "9.9"}
            async with s.post(f"{node.url}/message:send", json=body, headers=headers) as resp:
                assert resp.status == 400 and (await resp.json())["code"] == -32009
            async with s.post(
                f"{node.url}/tasks/{task['id']}/pushNotificationConfigs", json={}
            ) as resp:
                assert resp.status == 400 and (await resp.json())["code"] == -32003
            async with s.post(f"{node.url}/message:stream", json=body) as resp:
                assert resp.content_type == "text/event-stream"
                frames = [
                    json.loads(line[6:])
                    async for line in resp.content
                    if line.startswith(b"data: ")
                ]
        assert "task" in frames[0] and frames[-1]["statusUpdate"]["status"]["state"] == (
            "TASK_STATE_COMPLETED"
        )
