"""The dashboard's views in a real browser (Playwright + Debian's chromium): dead letters at
scale, charts over time, a conversation as a timeline and a causation tree. Screenshots of
each view go to ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, Page, expect

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.config.network import NetworkConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
from AgentOperatingSystem.messaging.core.turns import InputRequired
from AgentOperatingSystem.messaging.network_protocol import NetworkProtocol
from AgentOperatingSystem.messaging.types import Message, MessageType
from AgentOperatingSystem.messaging.web.dashboard import install_dashboard
from AgentOperatingSystem.storage.manager import StorageManager
from tests.support.browser import ARTIFACTS


@dataclass
class Served:
    url: str
    bus: MessageBus
    storage: StorageManager


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    async with (
        StorageManager("memory://") as storage,
        MessageBus(MessageBusConfig(broker_url="memory://", poll_interval=0.01)) as bus,
    ):
        app = web.Application()
        install_dashboard(app, bus, storage, sample_interval=0.2)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield Served(f"http://127.0.0.1:{port}", bus, storage)
        finally:
            await runner.cleanup()


async def _open(browser: Browser, served: Served) -> tuple[Page, list[str]]:
    page = await browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"{served.url}/dashboard/?interval=250")
    await expect(page.locator("#status")).to_have_attribute("data-state", "live")
    return page, errors


async def _until(check: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def _shot(name: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)


async def test_a_filtered_bulk_resubmit_moves_exactly_the_filtered_set(
    browser: Browser, served: Served
) -> None:
    bus = served.bus
    fixed = asyncio.Event()
    handled: list[str] = []

    async def handler(m: Message) -> None:
        if not fixed.is_set():
            raise ValueError("downstream down")
        handled.append(m.message_id)

    await bus.subscribe("billing", [MessageType.TASK], handler)
    await bus.subscribe("shipping", [MessageType.TASK], handler)
    billing = [
        (
            await bus.publish(
                message_type=MessageType.TASK,
                recipient_id="billing",
                content={"n": i},
                retry_policy={"max_attempts": 1},
            )
        ).message_id
        for i in range(3)
    ]
    for i in range(2):
        await bus.publish(
            message_type=MessageType.TASK,
            recipient_id="shipping",
            content={"n": i},
            retry_policy={"max_attempts": 1},
        )

    async def all_dead() -> bool:
        return (
            await bus.dead_letter_depth("billing") == 3
            and await bus.dead_letter_depth("shipping") == 2
        )

    await _until(all_dead)
    page, errors = await _open(browser, served)
    await expect(page.locator("#dlq tbody tr")).to_have_count(5)
    await page.fill("#dlq-agent", "billing")
    await page.locator("#dlq-agent").dispatch_event("change")
    await expect(page.locator("#dlq tbody tr")).to_have_count(3)
    await page.fill("#dlq-reason", "max_attempts")
    await page.locator("#dlq-reason").dispatch_event("change")
    await expect(page.locator("#dlq tbody tr")).to_have_count(3)
    # The payload is shown.
    await page.locator(f'#dlq tr[data-message-id="{billing[0]}"] a').click()
    await expect(page.locator("#detail-body")).to_contain_text('"n": 0')
    await page.locator("#detail .close").click()

    fixed.set()
    await page.click("#dlq-bulk-resubmit")
    await expect(page.locator("#dlq-confirm")).to_be_visible()
    await expect(page.locator("#dlq-bulk-count")).to_have_text("3")
    await page.screenshot(path=_shot("dashboard-dlq-bulk.png"), full_page=True)
    assert handled == []  # the count came first: nothing was resubmitted yet
    await page.click("#dlq-confirm-go")
    await expect(page.locator("#dlq-notice")).to_contain_text("Resubmitted 3 of 3")
    await _until(lambda: _true(len(handled) == 3))
    assert sorted(handled) == sorted(billing)
    assert await bus.dead_letter_depth("billing") == 0
    assert await bus.dead_letter_depth("shipping") == 2
    await expect(page.locator("#dlq tbody tr")).to_have_count(0)
    assert errors == []
    await page.close()


async def _true(value: bool) -> bool:
    return value


async def test_sparklines_move_under_a_steady_load(browser: Browser, served: Served) -> None:
    bus = served.bus

    async def worker(m: Message) -> None:
        await asyncio.sleep(0.002)

    await bus.subscribe("steady", [MessageType.TASK], worker)
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            await bus.publish(message_type=MessageType.TASK, recipient_id="steady")
            await asyncio.sleep(0.01)

    task = asyncio.create_task(load())
    try:
        page, errors = await _open(browser, served)
        line = page.locator('svg.sparkline[data-agent="steady"] polyline[data-series="published"]')
        await expect(line).to_have_count(1)
        first = await line.get_attribute("points")
        await page.wait_for_timeout(700)
        second = await line.get_attribute("points")
        assert first and second and first != second
        assert len(second.split()) > len(first.split()) or second != first
        await page.locator('#queues tr[data-agent="steady"] .agent').click()
        rates = page.locator('#agent-chart-rates polyline[data-series="published"]')
        await expect(rates).to_have_count(1)
        await expect(page.locator("#agent-chart-latency .legend-p95_ms")).to_contain_text("p95")
        await page.screenshot(path=_shot("dashboard-charts.png"), full_page=True)
        assert errors == []
        await page.close()
    finally:
        stop.set()
        await task


async def test_a_three_agent_conversation_renders_as_a_timeline_in_order(
    browser: Browser, served: Served
) -> None:
    bus = served.bus
    conversations = ConversationSystem(served.storage)
    cid = await conversations.start_conversation(["ceo", "cfo", "analyst"], "q2_forecast")
    done = asyncio.Event()

    async def cfo(m: Message) -> None:
        await bus.publish(
            message_type=MessageType.QUERY,
            sender_id="cfo",
            recipient_id="analyst",
            content={"ask": "numbers"},
            correlation_id=cid,
        )

    async def analyst(m: Message) -> None:
        await bus.publish(
            message_type=MessageType.RESPONSE,
            sender_id="analyst",
            recipient_id="ceo",
            content={"revenue": 42},
            correlation_id=cid,
        )

    async def ceo(m: Message) -> None:
        done.set()

    await bus.subscribe("cfo", [MessageType.TASK], cfo)
    await bus.subscribe("analyst", [MessageType.QUERY], analyst)
    await bus.subscribe("ceo", [MessageType.RESPONSE], ceo)
    page, errors = await _open(browser, served)
    first = await bus.publish(
        message_type=MessageType.TASK,
        sender_id="ceo",
        recipient_id="cfo",
        content={"plan": "Q2"},
        correlation_id=cid,
    )
    await asyncio.wait_for(done.wait(), 5)

    await page.locator(f'#conversations li[data-conversation-id="{cid}"]').click()
    arrows = page.locator("#timeline-svg g.arrow")
    await expect(arrows).to_have_count(3)
    order = [
        (await a.get_attribute("data-from"), await a.get_attribute("data-to"))
        for a in await arrows.all()
    ]
    assert order == [("ceo", "cfo"), ("cfo", "analyst"), ("analyst", "ceo")]
    lanes = page.locator("#timeline-svg g.lane")
    await expect(lanes).to_have_count(3)
    head = page.locator(f'#timeline-svg g.arrow[data-message-id="{first.message_id}"]')
    await expect(head.locator("text")).to_contain_text(f"task {first.message_id[:8]}")
    await expect(head.locator("text")).to_contain_text(" ms")
    await page.screenshot(path=_shot("dashboard-timeline.png"), full_page=True)
    await head.click()
    await expect(page.locator("#detail-body")).to_contain_text("Q2")
    assert errors == []
    await page.close()


async def test_a_retried_then_dead_lettered_message_shows_every_step_in_its_tree(
    browser: Browser, served: Served
) -> None:
    bus = served.bus

    async def worker(m: Message) -> None:
        await bus.publish(
            message_type=MessageType.NOTIFICATION,
            sender_id="worker",
            recipient_id="audit",
            content={"saw": m.message_id},
        )
        raise RuntimeError("cannot process")

    await bus.subscribe("worker", [MessageType.TASK], worker)
    page, errors = await _open(browser, served)
    sent = await bus.publish(
        message_type=MessageType.TASK,
        sender_id="orchestrator",
        recipient_id="worker",
        content={"job": 7},
        retry_policy={"max_attempts": 3, "initial_delay": 0.01, "jitter": 0},
    )
    mid = sent.message_id

    async def dead() -> bool:
        return await bus.dead_letter_depth("worker") == 1

    await _until(dead)
    await page.fill("#trace-id", mid)
    await page.click("#trace-go")
    root = page.locator(f'#trace .trace-tree > li.trace-node[data-message-id="{mid}"]')
    await expect(root).to_have_count(1)
    steps = root.locator(":scope > ol.steps > li.step")
    await expect(steps).to_have_count(4)
    kinds = [await s.get_attribute("data-kind") for s in await steps.all()]
    assert kinds == ["attempt", "attempt", "attempt", "dead_letter"]
    attempts = [await s.get_attribute("data-attempt") for s in (await steps.all())[:3]]
    assert attempts == ["1", "2", "3"]
    await expect(steps.nth(0)).to_contain_text("RuntimeError: cannot process")
    await expect(steps.nth(3)).to_contain_text("max_attempts")
    derived = root.locator(':scope > ul.children > li.trace-node[data-message-type="notification"]')
    await expect(derived).to_have_count(3)
    await page.screenshot(path=_shot("dashboard-causation.png"), full_page=True)
    assert errors == []
    await page.close()


async def test_answering_a_parked_task_from_the_inbox_resumes_it(browser: Browser) -> None:
    bus = MessageBus(MessageBusConfig(broker_url="memory://", poll_interval=0.01))
    await bus.start()
    storage = StorageManager("memory://")
    protocol = NetworkProtocol(
        NetworkConfig(host="127.0.0.1", port=0, allow_unsigned=True), bus, storage=storage
    )
    seen: list[dict[str, Any]] = []

    async def analyst(msg: Message) -> dict[str, Any]:
        seen.append(msg.content)
        if not msg.content["text"].startswith("Q"):
            return InputRequired("Which quarter?")
        return {"text": f"revenue for {msg.content['text']}: 42"}

    install_dashboard(protocol.app, bus, storage, tasks=protocol._a2a.desk)
    try:
        await bus.subscribe("analyst", [MessageType.QUERY], analyst)
        await protocol.start()
        await protocol.register_agent("analyst")
        ask = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendMessage",
            "params": {
                "message": {
                    "messageId": "m-1",
                    "role": "ROLE_USER",
                    "parts": [{"text": "revenue please"}],
                }
            },
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{protocol.url}/agents/analyst", json=ask, headers={"A2A-Version": "1.0"}
            ) as resp:
                task = (await resp.json())["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
        task_id = task["id"]

        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        await page.goto(f"{protocol.url}/dashboard/?interval=250")
        item = page.locator(f'#inbox li.task[data-task-id="{task_id}"]')
        await expect(item.locator(".question")).to_have_text("Which quarter?")
        await item.locator("textarea").fill("Q3")
        await page.screenshot(path=_shot("dashboard-inbox.png"), full_page=True)
        await item.locator("button").click()
        await expect(page.locator("#inbox-notice")).to_contain_text(f"Answered task {task_id[:8]}")
        await _until(lambda: _true(len(seen) == 2))
        assert seen[1]["text"] == "Q3"
        assert seen[1]["a2a"]["task_id"] == task_id
        await expect(item).to_have_count(0)
        stored = await protocol._a2a.desk.store.get(task_id)
        assert stored is not None

        async def completed() -> bool:
            t = await protocol._a2a.desk.store.get(task_id)
            return t is not None and t.state == "completed"

        await _until(completed)
        assert errors == []
        await page.close()
    finally:
        await protocol.stop()
        await bus.stop()
        await storage.close()
