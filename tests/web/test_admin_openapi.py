"""The admin API's contract: ``/admin/openapi.json`` describes every ``/admin`` route, and
the routes keep it under schemathesis (bounded examples): no 5xx, every response conforms to
its schema, and every route answers 401 without the token when one is set.

The node runs in a thread with its own event loop (schemathesis calls it with blocking
``requests``), on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
from AgentOperatingSystem.messaging.types import Message, MessageType
from AgentOperatingSystem.messaging.web.dashboard import install_dashboard
from AgentOperatingSystem.messaging.web.openapi import openapi_document
from AgentOperatingSystem.messaging.web.routes import ADMIN_ROUTES
from AgentOperatingSystem.storage.manager import StorageManager

TOKEN = "contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 25
"""Examples per operation in the default run."""
NOT_FUZZED = ("/admin/tail", "/admin/request")
"""The stream never ends, and a request waits for an answer (its 504 is a gateway timeout,
by contract): both are checked by hand below, not fuzzed."""


class ThreadNode:
    """A bus, a store and the dashboard app served from a thread's own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.url = ""
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with (
            StorageManager("memory://") as storage,
            MessageBus(MessageBusConfig(broker_url="memory://", poll_interval=0.01)) as bus,
        ):
            app = web.Application()
            install_dashboard(app, bus, storage, token=TOKEN, node_info={"node_id": "n1"})
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            await self._seed(bus, storage)
            self.ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()

    async def _seed(self, bus: MessageBus, storage: StorageManager) -> None:
        async def fail(m: Message) -> None:
            raise RuntimeError("always fails")

        await bus.subscribe("failing", [MessageType.TASK], fail)
        for i in range(3):
            await bus.publish(
                message_type=MessageType.TASK,
                recipient_id="failing",
                content={"i": i},
                retry_policy={"max_attempts": 1},
            )
        conversations = ConversationSystem(storage)
        cid = await conversations.start_conversation(["a", "b"], "topic")
        await conversations.add_message(cid, "a", "hello")
        for _ in range(200):
            if await bus.dead_letter_depth("failing") == 3:
                break
            await asyncio.sleep(0.01)

    def __enter__(self) -> ThreadNode:
        self._thread.start()
        assert self.ready.wait(20), "the node did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        self.loop.close()


@pytest.fixture(scope="module")
def node() -> Iterator[ThreadNode]:
    with ThreadNode() as n:
        yield n


schema = schemathesis.openapi.from_dict(openapi_document(secured=True)).exclude(
    path=list(NOT_FUZZED)
)
"""The document the node serves (``test_the_served_document_is_the_route_tables``)."""


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_admin_route_keeps_its_contract(case: Any, node: ThreadNode) -> None:
    case.call_and_validate(
        base_url=node.url,
        headers=AUTH,
        checks=[
            not_a_server_error,
            response_schema_conformance,
            status_code_conformance,
            content_type_conformance,
        ],
        timeout=10,
    )


def _concrete(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "x", path.replace("{agent}", "failing"))


def test_every_route_answers_401_without_the_token(node: ThreadNode) -> None:
    for route in ADMIN_ROUTES:
        url = node.url + _concrete(route.path)
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            if route.method == "POST":
                answer = requests.post(url, json={}, headers=headers, timeout=10)
            else:
                answer = requests.get(url, headers=headers, timeout=10)
            assert answer.status_code == 401, (route.method, route.path, answer.status_code)
            assert answer.json()["error"]["type"] == "Unauthorized"


def test_the_document_describes_every_admin_route_the_app_registers() -> None:
    app = web.Application()
    install_dashboard(app, _NoBus(), token="t")
    registered = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith("/admin")
        and r.method != "HEAD"
    }
    doc = openapi_document(secured=True)
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert registered == described
    assert len(described) == len(ADMIN_ROUTES)
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for ops in doc["paths"].values():
        for op in ops.values():
            assert "401" in op["responses"] and "200" in op["responses"]


def test_the_served_document_is_the_route_tables(node: ThreadNode) -> None:
    served = requests.get(f"{node.url}/admin/openapi.json", headers=AUTH, timeout=10).json()
    assert served == openapi_document(secured=True)


def test_the_routes_left_out_of_the_fuzzing_answer_as_documented(node: ThreadNode) -> None:
    timeout = requests.post(
        f"{node.url}/admin/request",
        json={"recipient_id": "nobody", "timeout": 0.05},
        headers=AUTH,
        timeout=10,
    )
    assert timeout.status_code == 504
    assert timeout.json()["error"]["type"] == "RequestTimeoutError"
    bad = requests.post(f"{node.url}/admin/request", json={"timeout": 1}, headers=AUTH, timeout=10)
    assert bad.status_code == 400
    with requests.get(f"{node.url}/admin/tail", headers=AUTH, stream=True, timeout=10) as tail:
        assert tail.status_code == 200
        assert tail.headers["Content-Type"].startswith("text/event-stream")


class _NoBus:
    """Enough of a bus for installing the routes (nothing is called)."""

    telemetry = None
    subscriptions: dict[str, Any] = {}
