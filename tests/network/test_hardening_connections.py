"""Bounded connections (issue 20, items 2 and 7): the node's HTTP server counts connections in
all and per client address, times out slow headers, slow bodies and idle keep-alive
connections, refuses cleanly past its limits, and logs a client that goes away mid-request
as one quiet line.

The large run (2,000 slow connections against a node in a child process whose open-file
limit is 1,024) is marked ``harden`` (``make harden``); a small run is in the default suite.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from AgentOperatingSystem.config.network import LimitsConfig, NetworkConfig
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.errors import ConfigurationError
from AgentOperatingSystem.messaging.network.auth import signature_headers
from AgentOperatingSystem.messaging.network.connections import ConnectionGuard
from AgentOperatingSystem.messaging.network.node import NetworkProtocol
from tests.network.nodes import SECRET, cfg, memory_bus

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def guard_of(node: NetworkProtocol) -> ConnectionGuard:
    """The node's connection guard."""
    return node._server.guard


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


_OPENED: list[Stream] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    """Every raw connection a test opened is closed (aborted) after it."""
    yield
    while _OPENED:
        _, writer = _OPENED.pop()
        writer.transport.abort()
    await asyncio.sleep(0)


async def open_from(url: str, source: str = "127.0.0.1") -> Stream:
    """A raw TCP connection to the node at ``url`` from the loopback address ``source``
    (closed after the test)."""
    host, port = host_port(url)
    stream = await asyncio.open_connection(host, port, local_addr=(source, 0))
    _OPENED.append(stream)
    return stream


def slow_body_head(url: str, path: str = "/aos/v1/messages") -> bytes:
    """Headers of a signed-looking POST declaring 1,000 bytes, then 10 of them."""
    host, port = host_port(url)
    signed = signature_headers(SECRET.encode(), "POST", path, b"", time.time())
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/cloudevents+json",
        "Content-Length: 1000",
        *(f"{k}: {v}" for k, v in signed.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + b"0123456789"


async def answer_of(stream: Stream, timeout: float = 5.0) -> bytes:
    """Everything the node sends on ``stream`` until it closes it."""
    reader, _ = stream
    return await asyncio.wait_for(reader.read(), timeout)


async def health_within(url: str, source: str = "127.0.0.1") -> float:
    """Seconds a normal client from ``source`` waits for ``/aos/v1/health`` (200)."""
    start = time.perf_counter()
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.get(url + "/aos/v1/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
            assert r.status == 200
            await r.read()
    return time.perf_counter() - start


async def settle(clock: ManualClock, seconds: float) -> None:
    """Advance the clock and let the loop run a little (closing takes a turn or two)."""
    await clock.advance_and_settle(seconds)
    await asyncio.sleep(0.05)


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def node_factory() -> AsyncIterator[Callable[..., Any]]:
    """Start nodes on a memory bus with the given settings; all stopped afterwards."""
    started: list[tuple[NetworkProtocol, Any]] = []

    async def make(clock: ManualClock | None = None, **settings: Any) -> NetworkProtocol:
        bus = memory_bus()
        await bus.start()
        node = NetworkProtocol(cfg(**settings), bus, clock=clock)
        started.append((node, bus))
        return node

    yield make
    for node, bus in started:
        await node.stop()
        await bus.stop()


# ------------------------------------------------------------------------- limits


async def test_200_slow_connections_past_a_limit_of_64_leave_a_normal_client_answered(
    node_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    node = await node_factory(max_inbound_connections=64, max_connections_per_client=0)
    await node.start()
    guard = guard_of(node)
    head = slow_body_head(node.url)
    streams: list[Stream] = []
    for i in range(200):  # half send 10 of 1,000 declared bytes, half send nothing at all
        stream = await open_from(node.url)
        if i % 2 == 0:
            stream[1].write(head)
        streams.append(stream)
    await asyncio.sleep(0.2)
    assert guard.open_connections <= 64
    assert guard.evicted + guard.refused >= 200 - 64
    elapsed = [await health_within(node.url) for _ in range(5)]
    assert max(elapsed) < 1.0, elapsed
    assert guard.open_connections <= 64
    lines = [r for r in caplog.records if r.name.startswith(("aos", "aiohttp", "asyncio"))]
    assert len(lines) < 10, [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in caplog.records)


async def test_a_client_at_its_own_limit_makes_room_or_is_refused_others_are_served(
    node_factory: Callable[..., Any],
) -> None:
    node = await node_factory(max_connections_per_client=4)
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="held")

    node.app.router.add_get("/hold", hold)
    await node.start()
    guard = guard_of(node)
    # four waiting connections: a fifth from the same address closes the oldest (503)
    waiting = [await open_from(node.url) for _ in range(4)]
    await asyncio.sleep(0.05)
    fifth = await open_from(node.url)
    assert b"503 Service Unavailable" in await answer_of(waiting[0])
    assert guard.evicted == 1 and guard.refused == 0
    for _, w in [*waiting[1:], fifth]:
        w.transport.abort()
    await wait_until(lambda: guard.open_connections == 0)

    # four connections busy with a request: a fifth is refused, 503, and closed at once
    host, port = host_port(node.url)
    busy = [await open_from(node.url) for _ in range(4)]
    for _, w in busy:
        w.write(f"GET /hold HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await wait_until(lambda: guard.open_connections == 4 and not guard._waiting)
    refused = await answer_of(await open_from(node.url))
    assert refused.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert b"Retry-After: 1" in refused and guard.refused == 1
    # another address is not held by this one's limit
    assert await health_within(node.url, source="127.0.0.2") < 1.0
    release.set()
    for stream in busy:
        assert b"held" in await asyncio.wait_for(stream[0].read(1024), 5)


def test_the_limits_are_network_settings_with_safe_defaults() -> None:
    limits = NetworkConfig().limits
    assert (limits.max_inbound_connections, limits.max_connections_per_client) == (1024, 128)
    assert (limits.header_timeout, limits.body_timeout, limits.keepalive_timeout) == (10, 30, 75)
    config = NetworkConfig(limits=LimitsConfig(header_timeout=3), max_connections_per_client=0)
    assert (config.header_timeout, config.max_connections_per_client) == (3, 0)
    assert config.replace(body_timeout=4).limits.body_timeout == 4
    for bad in ({"header_timeout": 0}, {"max_inbound_connections": 0}, {"body_timeout": -1}):
        with pytest.raises(ConfigurationError):
            NetworkConfig(**bad)


async def test_the_total_is_capped_by_the_open_file_limit() -> None:
    cfg_limits = cfg(max_inbound_connections=100_000).limits
    guard = ConnectionGuard(cfg_limits, ManualClock(), cap=512)
    assert guard.max_connections == 512
    assert (
        ConnectionGuard(cfg(max_inbound_connections=64).limits, ManualClock()).max_connections == 64
    )


# ------------------------------------------------------------------------- timeouts


async def test_slow_headers_slow_bodies_and_idle_keepalives_time_out(
    node_factory: Callable[..., Any],
) -> None:
    clock = ManualClock(start=time.time())
    node = await node_factory(clock, header_timeout=5.0, body_timeout=20.0, keepalive_timeout=60.0)
    await node.start()
    guard = guard_of(node)
    host, port = host_port(node.url)
    silent = await open_from(node.url)
    half_header = await open_from(node.url)
    half_header[1].write(b"GET /aos/v1/health HTTP/1.1\r\nHost: x\r\n")
    slow_body = await open_from(node.url)
    slow_body[1].write(slow_body_head(node.url))
    kept = await open_from(node.url)
    kept[1].write(f"GET /aos/v1/health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    assert b"200 OK" in await asyncio.wait_for(kept[0].readuntil(b"}"), 5)
    await wait_until(lambda: guard.open_connections == 4)

    await settle(clock, 4.0)
    assert guard.sweep() == 0  # nothing is late yet
    await settle(clock, 2.0)  # 6 s: the headers are late, the body is not
    guard.sweep()
    for stream in (silent, half_header):
        assert (await answer_of(stream)).startswith(b"HTTP/1.1 408 Request Timeout")
    assert guard.open_connections == 2
    await settle(clock, 15.0)  # 21 s: the body is late
    guard.sweep()
    assert (await answer_of(slow_body)).startswith(b"HTTP/1.1 408 Request Timeout")
    await settle(clock, 45.0)  # 66 s: the kept-alive connection idled for 60 s
    guard.sweep()
    assert await answer_of(kept) == b""  # closed without an answer: it asked for nothing
    await wait_until(lambda: guard.open_connections == 0)
    assert guard.timed_out == 4


# ------------------------------------------------------------------------- disconnects


async def test_clients_that_leave_mid_body_give_one_quiet_line_not_tracebacks(
    node_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock(start=time.time())
    node = await node_factory(clock)
    await node.start()
    guard = guard_of(node)
    for _ in range(50):
        _, writer = await open_from(node.url)
        writer.write(slow_body_head(node.url))
        await writer.drain()
        await wait_until(lambda: any(c.state == "body" for c in guard._waiting))
        writer.transport.abort()  # gone in the middle of the body
        await wait_until(lambda: guard.open_connections == 0)
    await wait_until(lambda: guard.gone_log.total == 50)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info]
    gone = [r.getMessage() for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and "POST /aos/v1/messages" in gone[0]
    clock.advance(60)  # the next line, later, counts the ones not logged
    guard.sweep()
    counted = [r.getMessage() for r in caplog.records if "more clients gone" in r.getMessage()]
    assert counted == ["49 more clients gone in the middle of a request"]


# ------------------------------------------------------------------------- make harden

CHILD = Path(__file__).resolve()
ROOT = CHILD.parents[2]


def start_child(tmp_path: Path, nofile: int) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A node in a child process whose open-file limit is ``nofile`` (logging at INFO to a
    file); its URL and log path."""
    ready = tmp_path / "ready.json"
    log_path = tmp_path / "node.log"
    spec = {"ready": str(ready), "nofile": nofile, "secret": SECRET}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps(spec)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(log_path.read_text())
        time.sleep(0.02)
    return proc, json.loads(ready.read_text())["url"], log_path


ATTACK_SECONDS = 12.0  # past the default header_timeout (10 s): the sweep closes sockets too


@pytest.mark.harden
@pytest.mark.parametrize("sources", [1, 20], ids=["one-address", "20-addresses"])
async def test_2000_slow_connections_against_1024_files_leave_a_normal_client_answered(
    tmp_path: Path, sources: int
) -> None:
    proc, url, log_path = start_child(tmp_path, nofile=1024)
    streams: list[Stream] = []
    host, port = host_port(url)
    try:
        head = slow_body_head(url)
        for batch in range(20):  # 1,000 slow bodies and 1,000 silent sockets
            source = "127.0.0.1" if sources == 1 else f"127.0.3.{batch % sources + 1}"
            opened = await asyncio.gather(
                *(asyncio.open_connection(host, port, local_addr=(source, 0)) for _ in range(100))
            )
            for i, stream in enumerate(opened):
                if (batch + i) % 2 == 0:
                    stream[1].write(head)
            streams.extend(opened)
        elapsed: list[float] = []
        fds: list[int] = []
        end = time.monotonic() + ATTACK_SECONDS
        while time.monotonic() < end:  # the attackers hold on; a normal client comes and goes
            fds.append(len(os.listdir(f"/proc/{proc.pid}/fd")))
            elapsed.append(await health_within(url))
            await asyncio.sleep(0.25)
        for _, writer in streams:
            writer.transport.abort()
        await asyncio.sleep(1.0)
        lines = log_path.read_text().splitlines()
        print(
            f"\n2000 slow connections from {sources} address(es), {ATTACK_SECONDS:.0f}s:"
            f" normal client {len(elapsed)} requests, max {max(elapsed) * 1000:.1f} ms;"
            f" node fds max {max(fds)} of 1024; node log {len(lines)} lines"
        )
        assert max(elapsed) < 1.0, elapsed
        assert max(fds) < 1024
        assert len(lines) < 100, "\n".join(lines[:20])
        assert not any("Too many open files" in line for line in lines)
    finally:
        for _, writer in streams:
            writer.transport.abort()
        proc.terminate()
        proc.wait(15)


async def _child(spec: dict[str, Any]) -> None:  # pragma: no cover - the child process
    import resource
    import signal

    resource.setrlimit(resource.RLIMIT_NOFILE, (spec["nofile"], spec["nofile"]))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with memory_bus() as bus:
        async with NetworkProtocol(cfg(auth_secret=spec["secret"]), bus) as node:
            tmp = spec["ready"] + ".tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps({"url": node.url}))
            os.replace(tmp, spec["ready"])
            await stop.wait()


if __name__ == "__main__":  # pragma: no cover - the child process
    asyncio.run(_child(json.loads(sys.argv[1])))
