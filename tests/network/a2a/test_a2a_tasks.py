"""Tasks that live, with the official a2a-sdk client: ListTasks paging, SubscribeToTask on a
running task, an INPUT_REQUIRED round trip (the bus API :class:`InputRequired`), a parked
task continued by a new node on the same store, and late answers folded into their tasks
(never left in a queue)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import UnsupportedOperationError

from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
from AgentOperatingSystem.messaging.core.turns import InputRequired, input_required
from AgentOperatingSystem.messaging.network.a2a import desk
from AgentOperatingSystem.messaging.network.a2a.gateway import ANSWERS
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.network.a2a.support import rpc, running_node, sdk_client, user_message
from tests.support.waiting import eventually


async def echo(msg: Message) -> dict[str, Any]:
    return {"text": f"echo: {msg.content['text']}"}


async def test_list_tasks_pages_over_25_tasks_newest_first() -> None:
    async with running_node() as node:
        await node.bus.subscribe("echo", [MessageType.QUERY], echo)
        await node.protocol.register_agent("echo")
        await node.bus.subscribe("other", [MessageType.QUERY], echo)
        await node.protocol.register_agent("other")
        async with sdk_client(node.agent_url("echo")) as client:
            made = []
            for i in range(25):
                ctx = "even" if i % 2 == 0 else "odd"
                req = user_message(f"t{i}", message_id=f"m{i}", context_id=ctx)
                (event,) = [e async for e in client.send_message(req)]
                made.append(event.task.id)
            async with sdk_client(node.agent_url("other")) as other:
                [_ async for _ in other.send_message(user_message("elsewhere"))]

            pages, token = [], ""
            while True:
                page = await client.list_tasks(ListTasksRequest(page_size=10, page_token=token))
                assert page.total_size == 25  # the other agent's task is not listed here
                pages.append([t.id for t in page.tasks])
                token = page.next_page_token
                if not token:
                    break
            assert [len(p) for p in pages] == [10, 10, 5]
            listed = [tid for p in pages for tid in p]
            assert listed == list(reversed(made))  # newest first, each once
            page = await client.list_tasks(ListTasksRequest())
            assert page.page_size == 25 and page.next_page_token == ""
            assert all(len(t.artifacts) == 0 and len(t.history) == 0 for t in page.tasks)

            odd = await client.list_tasks(
                ListTasksRequest(context_id="odd", include_artifacts=True, history_length=1)
            )
            assert odd.total_size == 12 and {t.context_id for t in odd.tasks} == {"odd"}
            assert odd.tasks[0].artifacts[0].parts[0].text == "echo: t23"
            assert [len(t.history) for t in odd.tasks] == [1] * 12
            done = await client.list_tasks(
                ListTasksRequest(status=TaskState.TASK_STATE_COMPLETED, page_size=3)
            )
            assert done.total_size == 25 and len(done.tasks) == 3
            working = await client.list_tasks(ListTasksRequest(status=TaskState.TASK_STATE_WORKING))
            assert working.total_size == 0

        url = node.agent_url("echo")
        for bad in ({"pageSize": 0}, {"pageSize": 101}, {"pageToken": "nope"}, {"status": "X"}):
            out = await rpc(url, {"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": bad})
            assert out["error"]["code"] == -32602, bad


async def test_subscribe_to_a_running_task() -> None:
    release = asyncio.Event()

    async def slow(msg: Message) -> dict[str, Any]:
        await release.wait()
        return {"text": "done at last"}

    async with running_node(a2a_request_timeout=5) as node:
        await node.bus.subscribe("slow", [MessageType.QUERY], slow)
        await node.protocol.register_agent("slow")
        async with sdk_client(node.agent_url("slow")) as sender:
            (first,) = [e async for e in sender.send_message(user_message("go", immediate=True))]
            task_id = first.task.id
        async with sdk_client(node.agent_url("slow"), streaming=True) as client:
            events = []
            async for event in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                events.append(event)
                if len(events) == 1:
                    assert event.task.id == task_id  # the Task first
                    assert event.task.status.state == TaskState.TASK_STATE_WORKING
                    release.set()
            kinds = [e.WhichOneof("payload") for e in events]
            assert kinds == ["task", "artifact_update", "status_update"]
            assert events[1].artifact_update.artifact.parts[0].text == "done at last"
            assert events[2].status_update.status.state == TaskState.TASK_STATE_COMPLETED
            # a finished task cannot be subscribed to
            with pytest.raises(UnsupportedOperationError):
                [_ async for _ in client.subscribe(SubscribeToTaskRequest(id=task_id))]


def quarterly(seen: list[Message]) -> Any:
    """An agent that needs to know the quarter before it answers."""

    async def handler(msg: Message) -> dict[str, Any]:
        seen.append(msg)
        text = msg.content["text"]
        if not text.startswith("Q"):
            return InputRequired("Which quarter?", options=["Q1", "Q2", "Q3", "Q4"])
        return {"text": f"revenue for {text}: 42"}

    return handler


async def test_an_input_required_round_trip() -> None:
    seen: list[Message] = []
    async with running_node(conversations=True) as node:
        await node.bus.subscribe("analyst", [MessageType.QUERY], quarterly(seen))
        await node.protocol.register_agent("analyst")
        async with sdk_client(node.agent_url("analyst")) as client:
            (event,) = [e async for e in client.send_message(user_message("revenue please"))]
            task = event.task
            assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            assert task.status.message.parts[0].text == "Which quarter?"
            follow = user_message("Q3", message_id="m-2", task_id=task.id)
            (event,) = [e async for e in client.send_message(follow)]
            done = event.task
            assert done.id == task.id and done.context_id == task.context_id
            assert done.status.state == TaskState.TASK_STATE_COMPLETED
            assert done.artifacts[-1].parts[0].text == "revenue for Q3: 42"
            texts = [m.parts[0].text for m in done.history]
            assert texts == ["revenue please", "Which quarter?", "Q3", "revenue for Q3: 42"]
            # both turns reached the handler as the same task and conversation
            ids = {(m.content["a2a"]["task_id"], m.content["a2a"]["context_id"]) for m in seen}
            assert ids == {(task.id, task.context_id)}
            assert [m.content["a2a"]["turn"] for m in seen] == [1, 2]
            # the context is a conversation of the ConversationSystem, with every turn
            conversations = ConversationSystem(node.protocol.storage)
            history = await conversations.get_conversation_history(task.context_id)
            assert [(t["sender_id"], t["content"]["text"]) for t in history] == [
                (f"a2a:{task.context_id}", "revenue please"),
                ("analyst", "Which quarter?"),
                (f"a2a:{task.context_id}", "Q3"),
                ("analyst", "revenue for Q3: 42"),
            ]
            assert {t["metadata"]["a2a_task_id"] for t in history} == {task.id}
            # a finished task takes no more messages; cancel refuses it too
            again = user_message("Q4", message_id="m-3", task_id=task.id)
            with pytest.raises(UnsupportedOperationError):
                [_ async for _ in client.send_message(again)]

            (event,) = [e async for e in client.send_message(user_message("hmm"))]
            canceled = await client.cancel_task(CancelTaskRequest(id=event.task.id))
            assert canceled.status.state == TaskState.TASK_STATE_CANCELED


async def test_input_required_on_the_bus() -> None:
    seen: list[Message] = []
    async with running_node() as node:
        await node.bus.subscribe("analyst", [MessageType.QUERY], quarterly(seen))
        answer = await node.bus.request("me", "analyst", {"text": "revenue"}, timeout=5)
        assert input_required(answer.content) and answer.content["text"] == "Which quarter?"
        assert answer.content["options"] == ["Q1", "Q2", "Q3", "Q4"]
        answer = await node.bus.request("me", "analyst", {"text": "Q1"}, timeout=5)
        assert not input_required(answer.content)


async def test_a_parked_task_is_continued_by_a_new_node_on_the_same_store(
    tmp_path: Path,
) -> None:
    files: dict[str, Any] = {
        "broker_url": f"sqlite:///{tmp_path}/bus.db",
        "storage_url": f"sqlite:///{tmp_path}/s.db",
    }
    seen: list[Message] = []
    async with running_node(**files) as first:
        await first.bus.subscribe("analyst", [MessageType.QUERY], quarterly(seen))
        await first.protocol.register_agent("analyst")
        async with sdk_client(first.agent_url("analyst")) as client:
            (event,) = [e async for e in client.send_message(user_message("revenue please"))]
            parked = event.task
        assert parked.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    async with running_node(**files) as second:  # a restart: another port, the same files
        await second.bus.subscribe("analyst", [MessageType.QUERY], quarterly(seen))
        await second.protocol.register_agent("analyst")
        async with sdk_client(second.agent_url("analyst")) as client:
            got = await client.get_task(GetTaskRequest(id=parked.id))
            assert got.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            follow = user_message("Q2", message_id="m-2", task_id=parked.id)
            (event,) = [e async for e in client.send_message(follow)]
        assert event.task.status.state == TaskState.TASK_STATE_COMPLETED
        assert event.task.artifacts[-1].parts[0].text == "revenue for Q2: 42"
        assert len(event.task.history) == 4


async def late_answers(tmp_path: Path, calls: int) -> None:
    """``calls`` A2A calls time out; their answers come later: each is in its task, and no
    queue keeps a row."""
    release = asyncio.Event()

    async def slow(msg: Message) -> dict[str, Any]:
        await release.wait()
        return {"text": f"late: {msg.content['text']}"}

    files: dict[str, Any] = {
        "broker_url": f"sqlite:///{tmp_path}/bus.db",
        "storage_url": f"sqlite:///{tmp_path}/s.db",
    }
    async with running_node(a2a_request_timeout=0.05, a2a_max_tasks=2 * calls, **files) as node:
        await node.bus.subscribe("slow", [MessageType.QUERY], slow, max_concurrency=calls)
        await node.protocol.register_agent("slow")
        url = node.agent_url("slow")
        ids = []
        for i in range(calls):
            params = {
                "message": {
                    "messageId": f"m{i}",
                    "contextId": f"c{i}",
                    "role": "ROLE_USER",
                    "parts": [{"text": str(i)}],
                }
            }
            out = await rpc(
                url, {"jsonrpc": "2.0", "id": i, "method": "SendMessage", "params": params}
            )
            assert out["result"]["task"]["status"]["state"] == "TASK_STATE_WORKING"
            ids.append(out["result"]["task"]["id"])
        release.set()

        async def all_completed() -> bool:
            page = await rpc(
                url,
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "ListTasks",
                    "params": {"status": "TASK_STATE_COMPLETED", "pageSize": 100},
                },
            )
            return bool(page["result"]["totalSize"] == calls)

        await eventually(
            all_completed, timeout=60, what="every late answer folded in", interval=0.1
        )
        for i in (0, calls // 2, calls - 1):
            out = await rpc(
                url, {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": ids[i]}}
            )
            task = out["result"]
            assert task["status"]["state"] == "TASK_STATE_COMPLETED"
            assert task["artifacts"][0]["parts"][0]["text"] == f"late: {i}"

        async def no_rows() -> bool:
            queues = await node.bus.queues()
            depths = [await node.bus.queue_depth(q) for q in queues]
            return sum(depths) == 0

        await eventually(no_rows, what="no queue rows left")
        queues = await node.bus.queues()
        assert not [q for q in queues if q.startswith("a2a:")]
        assert await node.bus.dead_letter_depth(ANSWERS) == 0


async def test_late_answers_are_folded_into_their_tasks(tmp_path: Path) -> None:
    await late_answers(tmp_path, 30)


@pytest.mark.harden
async def test_300_late_answers_leave_no_queue_rows(tmp_path: Path) -> None:
    await late_answers(tmp_path, 300)


async def test_the_tasks_kept_are_bounded() -> None:
    async with running_node(a2a_max_tasks=5) as node:
        await node.bus.subscribe("echo", [MessageType.QUERY], echo)
        await node.protocol.register_agent("echo")
        async with sdk_client(node.agent_url("echo")) as client:
            made = []
            for i in range(40):
                req = user_message(f"t{i}", message_id=f"m{i}")
                (event,) = [e async for e in client.send_message(req)]
                made.append(event.task.id)
            page = await client.list_tasks(ListTasksRequest())
            assert page.total_size <= 5
            assert made[-1] in [t.id for t in page.tasks]  # the oldest went first
            got = await client.get_task(GetTaskRequest(id=made[-1]))
            assert got.status.state == TaskState.TASK_STATE_COMPLETED


async def test_two_nodes_on_one_store_share_the_answers(tmp_path: Path) -> None:
    files: dict[str, Any] = {
        "broker_url": f"sqlite:///{tmp_path}/bus.db",
        "storage_url": f"sqlite:///{tmp_path}/s.db",
    }
    async with running_node(**files) as a, running_node(**files) as b:
        # the agent runs beside node b; node a serves it over A2A (the queue is shared)
        await b.bus.subscribe("echo", [MessageType.QUERY], echo)
        await a.protocol.register_agent("echo")
        url = a.agent_url("echo")
        # only node b takes answers: node a's callers see them through the store
        await a.protocol._a2a.gateway.stop()

        async def send(i: int) -> dict[str, Any]:
            params = {
                "message": {"messageId": f"m{i}", "role": "ROLE_USER", "parts": [{"text": str(i)}]}
            }
            out = await rpc(
                url, {"jsonrpc": "2.0", "id": i, "method": "SendMessage", "params": params}
            )
            return dict(out["result"]["task"])

        tasks = await asyncio.gather(*(send(i) for i in range(6)))
        assert [t["status"]["state"] for t in tasks] == ["TASK_STATE_COMPLETED"] * 6
        assert [t["artifacts"][0]["parts"][0]["text"] for t in tasks] == [
            f"echo: {i}" for i in range(6)
        ]


async def test_a_task_history_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(desk, "MAX_HISTORY", 4)
    async with running_node() as node:
        await node.bus.subscribe("mute", [MessageType.QUERY], lambda m: None)
        await node.protocol.register_agent("mute")
        async with sdk_client(node.agent_url("mute")) as client:
            (event,) = [e async for e in client.send_message(user_message("0", immediate=True))]
            task_id = event.task.id
            for i in range(1, 4):
                follow = user_message(str(i), message_id=f"m{i}", task_id=task_id, immediate=True)
                [_ async for _ in client.send_message(follow)]
            full = user_message("4", message_id="m4", task_id=task_id, immediate=True)
            with pytest.raises(UnsupportedOperationError):
                [_ async for _ in client.send_message(full)]
            got = await client.get_task(GetTaskRequest(id=task_id))
            assert len(got.history) == 4
