"""The dashboard in a real browser (Playwright + Debian's chromium).

A node (bus, network, dashboard, /metrics) runs in this process; the page shows a queue's
depth change, a dead letter with its reason and last error, and a click on *Resubmit*
delivers it (the live stream shows the handler succeeding). A screenshot is saved to
``test-artifacts/dashboard.png``.

CI needs: ``apt-get install -y chromium`` (for ``/usr/bin/chromium``) and the ``playwright``
Python package (in the ``dev`` extra); no ``playwright install`` download is needed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import pytest_asyncio
from playwright.async_api import Browser, Page, expect

from AgentOperatingSystem.messaging.cli import Node
from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
from AgentOperatingSystem.messaging.types import Message, MessageType
from tests.support.browser import ARTIFACTS


@pytest_asyncio.fixture
async def node() -> AsyncIterator[Node]:
    n = Node(broker_url="memory://", storage_url="memory://", port=0, allow_unsigned=True)
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


async def test_dashboard_shows_depth_and_resubmits_a_dead_letter(
    browser: Browser, node: Node
) -> None:
    bus = node.bus
    page: Page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    conversations = ConversationSystem(node.storage)
    cid = await conversations.start_conversation(["ceo_agent", "cfo_agent"], "quarterly_planning")
    await conversations.add_message(cid, "ceo_agent", "What's our revenue projection for Q2?")

    await page.goto(f"{node.url}/dashboard/?interval=250")
    await expect(page.locator("#status")).to_have_attribute("data-state", "live")

    # 1. A queue's depth changes on the page as messages arrive.
    for i in range(3):
        await bus.publish(message_type=MessageType.TASK, recipient_id="inbox", content={"i": i})
    depth = page.locator('#queues tr[data-agent="inbox"] .depth')
    await expect(depth).to_have_text("3")
    await bus.publish(message_type=MessageType.TASK, recipient_id="inbox", content={"i": 3})
    await expect(depth).to_have_text("4")

    # 2. A handler that fails dead-letters a message: the page shows reason and last error.
    fixed = asyncio.Event()
    handled: list[str] = []

    async def analyst(m: Message) -> None:
        if not fixed.is_set():
            raise ConnectionError("warehouse unavailable")
        handled.append(m.message_id)

    await bus.subscribe("analyst_1", [MessageType.TASK], analyst)
    result = await bus.publish(
        message_type=MessageType.TASK,
        recipient_id="analyst_1",
        sender_id="orchestrator",
        content={"task": "load"},
        retry_policy={"max_attempts": 1},
    )
    mid = result.message_id
    row = page.locator(f'#dlq tr[data-message-id="{mid}"]')
    await expect(row).to_be_visible()
    await expect(row.locator(".reason")).to_have_text("max_attempts")
    await expect(row.locator(".error-text")).to_contain_text(
        "ConnectionError: warehouse unavailable"
    )
    failed = page.locator(f'#stream li[data-event="handled"][data-message-id="{mid}"]')
    await expect(failed.first).to_have_attribute("data-ok", "false")

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-dead-letter.png"), full_page=True)

    # 3. Resubmit with a click; the message is delivered and the row goes away.
    fixed.set()
    await row.locator("button.resubmit").click()
    await expect(page.locator("#dlq-notice")).to_contain_text(f"Resubmitted {mid[:8]}")
    delivered = page.locator(
        f'#stream li[data-event="handled"][data-message-id="{mid}"][data-ok="true"]'
    )
    await expect(delivered).to_have_count(1)
    resubmitted = page.locator(f'#stream li[data-event="resubmitted"][data-message-id="{mid}"]')
    await expect(resubmitted).to_have_count(1)
    await expect(page.locator(f'#dlq tr[data-message-id="{mid}"]')).to_have_count(0)
    await expect(page.locator('#queues tr[data-agent="analyst_1"] .dead')).to_have_text("0")
    assert handled == [mid]
    assert await bus.dead_letter_depth("analyst_1") == 0

    # 4. The conversation viewer.
    item = page.locator(f'#conversations li[data-conversation-id="{cid}"]')
    await expect(item).to_contain_text("quarterly_planning")
    await item.click()
    await expect(page.locator("#conversation .turn")).to_contain_text(
        "What's our revenue projection for Q2?"
    )

    shot = ARTIFACTS / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert errors == []
    await page.close()


async def test_dashboard_token_is_required_when_set(browser: Browser) -> None:
    n = Node(
        broker_url="memory://",
        storage_url="memory://",
        port=0,
        allow_unsigned=True,
        token="s3cret-admin-token",
    )
    await n.start()
    try:
        page = await browser.new_page()
        denied = await page.goto(f"{n.url}/dashboard/")
        assert denied is not None and denied.status == 401
        api = await page.request.get(f"{n.url}/admin/queues")
        assert api.status == 401
        await n.bus.publish(message_type=MessageType.TASK, recipient_id="secure_inbox")
        ok = await page.goto(f"{n.url}/dashboard/?token=s3cret-admin-token&interval=250")
        assert ok is not None and ok.status == 200
        depth = page.locator('#queues tr[data-agent="secure_inbox"] .depth')
        await expect(depth).to_have_text("1")
        # A cross-site form post (no JSON content type) is refused even with the cookie.
        refused = await page.request.post(
            f"{n.url}/admin/dlq/secure_inbox/purge",
            data="x=1",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert refused.status == 415
        body: Any = json.loads(await refused.text())
        assert body["error"]["type"] == "UnsupportedMediaType"
        await page.close()
    finally:
        await n.stop()


async def test_admin_api_answers_json_with_clear_errors() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from AgentOperatingSystem.config.messagebus import MessageBusConfig
    from AgentOperatingSystem.messaging.bus import MessageBus
    from AgentOperatingSystem.messaging.web.dashboard import install_dashboard
    from AgentOperatingSystem.storage.manager import StorageManager

    async with (
        StorageManager("memory://") as storage,
        MessageBus(MessageBusConfig(broker_url="memory://", poll_interval=0.01)) as bus,
    ):
        app = web.Application()
        install_dashboard(app, bus, storage, node_info={"node_id": "n1"})
        async with TestClient(TestServer(app)) as client:
            info = await (await client.get("/admin/info")).json()
            assert info["node_id"] == "n1" and info["broker_url"] == "memory://"
            assert info["metrics"] is True and info["conversations"] is True

            sent = await client.post(
                "/admin/send",
                json={"message_type": "task", "recipient_id": "a1", "content": {"n": 1}},
            )
            assert sent.status == 200
            assert (await sent.json())["recipients"] == ["a1"]
            stats = await (await client.get("/admin/stats")).json()
            assert stats["agents"] == [
                {
                    "agent": "a1",
                    "published": 1,
                    "delivered": 0,
                    "acked": 0,
                    "nacked": 0,
                    "dead_lettered": 0,
                    "expired": 0,
                    "errors": 0,
                }
            ]

            async def status(method: str, path: str, **kw: Any) -> tuple[int, Any]:
                resp = await client.request(method, path, **kw)
                return resp.status, await resp.json()

            code, body = await status("POST", "/admin/send", json={"message_type": "task"})
            assert code == 422 and body["error"]["type"] == "RoutingError"
            code, body = await status("POST", "/admin/send", json={"recipient_id": "a1"})
            assert code == 400 and "message_type is required" in body["error"]["message"]
            code, body = await status("POST", "/admin/send", data="{", headers=JSON)
            assert code == 400 and body["error"]["type"] == "InvalidJSON"
            code, body = await status(
                "POST", "/admin/request", json={"recipient_id": "nobody", "timeout": 0.05}
            )
            assert code == 504 and body["error"]["type"] == "RequestTimeoutError"
            code, body = await status(
                "POST",
                "/admin/dlq/a1/purge",
                json={},
                headers={"Origin": "http://evil.example"},
            )
            assert code == 403
            code, body = await status("POST", "/admin/dlq/a1/x/resubmit", json={})
            assert code == 404 and body["error"]["type"] == "UnknownMessageError"
            code, body = await status("GET", "/admin/conversations/nope")
            assert code == 404 and body["error"]["type"] == "ConversationNotFoundError"
            code, body = await status("GET", "/admin/dlq?limit=0")
            assert code == 400
            missing = await client.get("/dashboard/static/secrets.txt")
            assert missing.status == 404
            page = await client.get("/dashboard", allow_redirects=False)
            assert page.status == 302 and page.headers["Location"] == "/dashboard/"


JSON = {"Content-Type": "application/json"}
