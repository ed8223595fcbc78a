"""``aos-messaging serve`` secured the way an operator expects (issue 20, item 6): the A2A token,
``/metrics`` behind ``--token`` with an explicit opt-out, and one WARNING per open surface."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from AgentOperatingSystem.messaging.cli import build_parser
from AgentOperatingSystem.messaging.cli.serve import (
    Node,
    _print_banner,
    _ServeOptions,
    is_loopback,
    open_surfaces,
)


def options(*argv: str) -> _ServeOptions:
    """``serve``'s options as the command line parses ``argv``."""
    return _ServeOptions.from_args(build_parser().parse_args(["serve", *argv]))


@pytest.fixture(autouse=True)
def no_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AOS_ADMIN_TOKEN", "AOS_A2A_TOKEN", "AOS_NETWORK_SECRET"):
        monkeypatch.delenv(name, raising=False)


def test_the_flags_parse_and_the_a2a_token_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opts = options("--a2a-token", "a2a-tok", "--token", "admin", "--metrics-public")
    assert (opts.a2a_token, opts.token, opts.metrics_public) == ("a2a-tok", "admin", True)
    defaults = options()
    assert (defaults.a2a_token, defaults.metrics_public) == (None, False)
    monkeypatch.setenv("AOS_A2A_TOKEN", "from-env")
    assert options().a2a_token == "from-env"
    assert options("--a2a-token", "flag").a2a_token == "flag"


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "node.example"))


def test_every_open_surface_on_a_public_host_is_one_warning() -> None:
    warnings = open_surfaces(options("--host", "0.0.0.0", "--allow-unsigned"))
    assert len(warnings) == 4
    assert [w.split(" ")[0] for w in warnings] == ["--allow-unsigned:", "the", "the", "/metrics"]
    assert "A2A" in warnings[1] and "--a2a-token" in warnings[1]
    assert "dashboard and /admin" in warnings[2] and "(no --token)" in warnings[3]
    # secured: nothing to say
    assert open_surfaces(options("--host", "0.0.0.0", "--token", "t", "--a2a-token", "a")) == []
    # a scraper's opt-out is an open surface, said so
    (public,) = open_surfaces(
        options("--host", "0.0.0.0", "--token", "t", "--a2a-token", "a", "--metrics-public")
    )
    assert public.startswith("/metrics") and "--metrics-public" in public
    # loopback: only --allow-unsigned, which is development-only anywhere
    assert open_surfaces(options()) == []
    (unsigned,) = open_surfaces(options("--allow-unsigned"))
    assert unsigned.startswith("--allow-unsigned")


@pytest.fixture
async def started() -> AsyncIterator[Any]:
    """Start a :class:`Node` on the memory engine, a free port (stopped afterwards)."""
    nodes: list[Node] = []

    async def start(**kwargs: Any) -> Node:
        node = Node(broker_url="memory://", storage_url="memory://", port=0, **kwargs)
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()


async def status_of(url: str, token: str | None = None, **kwargs: Any) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s:
        method = s.post if "json" in kwargs else s.get
        async with method(url, headers=headers, **kwargs) as resp:
            await resp.read()
            return resp.status


async def test_token_covers_metrics_unless_metrics_public(started: Any) -> None:
    node = await started(token="admin-token")
    assert await status_of(node.url + "/metrics") == 401
    assert await status_of(node.url + "/metrics", "wrong") == 401
    assert await status_of(node.url + "/metrics", "admin-token") == 200
    assert await status_of(node.url + "/aos/v1/health") == 200  # health stays public
    scraped = await started(token="admin-token", metrics_public=True)
    assert await status_of(scraped.url + "/metrics") == 200
    assert await status_of((await started()).url + "/metrics") == 200  # no token at all


async def test_a2a_token_protects_the_a2a_endpoints(started: Any) -> None:
    node = await started(a2a_token="a2a-secret")
    await node.protocol.register_agent("helper")
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "nope"}}
    agent = node.url + "/agents/helper"
    assert await status_of(agent, json=rpc) == 401
    assert await status_of(agent, "a2a-secret", json=rpc) == 200
    card = agent + "/.well-known/agent-card.json"
    assert await status_of(card) == 200  # discovery stays public
    open_node = await started()
    await open_node.protocol.register_agent("helper")
    assert await status_of(open_node.url + "/agents/helper", json=rpc) == 200


async def test_the_warnings_are_logged_at_start(
    started: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    node = await started(allow_unsigned=True)
    caplog.set_level(logging.WARNING, logger="aos.messaging.cli")
    _print_banner(node, options("--host", "0.0.0.0", "--allow-unsigned", "--port", "0"))
    got = [r for r in caplog.records if r.name == "aos.messaging.cli"]
    assert len(got) == 4 and all(r.levelno == logging.WARNING for r in got)
    assert "listening on" in capsys.readouterr().out
