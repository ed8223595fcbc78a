"""The SQLite engine's wake-ups: a send from another engine or another process on the same
file wakes a ``wait(queue, None)`` at once (a datagram among the processes, well before the
safety poll); a peer that is gone is pruned; the safety poll catches a lost notification;
due times of many queues share one timer task; a receive after one that drained the queue
costs no query."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from AgentOperatingSystem.messaging.brokers.base import Envelope
from AgentOperatingSystem.messaging.brokers.sqlite import SqliteBroker
from AgentOperatingSystem.messaging.brokers.sqlite.peers import wake_dir
from AgentOperatingSystem.messaging.clock import ManualClock
from AgentOperatingSystem.messaging.codec.envelope import encode
from AgentOperatingSystem.messaging.types import Message, MessageType

pytestmark = pytest.mark.timeout(60)

#: A wake-up by datagram takes milliseconds; the safety poll of these engines is 30 s away.
PROMPT = 1.0
NO_SAFETY = 30.0


def _env(queue: str, *, available_at: float = 0.0) -> Envelope:
    m = Message(message_type=MessageType.TASK, sender_id="t", recipient_id=queue, content={})
    return Envelope(queue, m.message_id, m.priority.value, encode(m), available_at=available_at)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SqliteBroker, SqliteBroker]]:
    """Two engines on one file (as two processes would have), safety poll out of reach."""
    path = tmp_path / "shared.db"
    a = SqliteBroker(path, safety_poll=NO_SAFETY)
    b = SqliteBroker(path, safety_poll=NO_SAFETY)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_a_send_from_another_engine_on_the_file_wakes_a_waiter_at_once(
    pair: tuple[SqliteBroker, SqliteBroker],
) -> None:
    a, b = pair
    await b.prepare("ceo")
    assert await b.receive("ceo", 10, 30) == []
    waiter = asyncio.create_task(b.wait("ceo", None))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    started = time.monotonic()
    await a.send([_env("ceo")])
    await asyncio.wait_for(waiter, PROMPT)
    assert time.monotonic() - started < PROMPT
    assert len(await b.receive("ceo", 10, 30)) == 1


async def test_a_send_from_another_process_wakes_a_waiter_at_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    broker = SqliteBroker(path, safety_poll=NO_SAFETY)
    await broker.prepare("ceo")
    assert await broker.receive("ceo", 10, 30) == []
    waiter = asyncio.create_task(broker.wait("ceo", None))
    code = textwrap.dedent(
        """
        import asyncio, sys
        from AgentOperatingSystem.messaging.brokers.base import Envelope
        from AgentOperatingSystem.messaging.brokers.sqlite import SqliteBroker
        from AgentOperatingSystem.messaging.codec.envelope import encode
        from AgentOperatingSystem.messaging.types import Message, MessageType

        async def main():
            broker = SqliteBroker(sys.argv[1])
            await broker.start()
            m = Message(message_type=MessageType.TASK, sender_id="p", recipient_id="ceo",
                        content={})
            await broker.send([Envelope("ceo", m.message_id, m.priority.value, encode(m))])
            print("sent", flush=True)
            await broker.close()

        asyncio.run(main())
        """
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.strip() == b"sent"
        sent = time.monotonic()
        await asyncio.wait_for(waiter, PROMPT)
        assert time.monotonic() - sent < PROMPT
        assert len(await broker.receive("ceo", 10, 30)) == 1
    finally:
        await asyncio.wait_for(child.wait(), 30)
        await broker.close()


async def test_the_socket_of_a_process_that_is_gone_is_pruned(
    pair: tuple[SqliteBroker, SqliteBroker],
) -> None:
    a, b = pair
    folder = wake_dir(a.path)
    stale = folder / f"{os.getpid() + 1_000_000}-dead"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()  # its file stays, like a crashed process's
    a.waiting.peers.refresh()
    assert str(stale) in a.waiting.peers.peers
    await a.send([_env("ceo")])
    await asyncio.sleep(0.05)  # the datagrams go out on the next loop turn
    assert not stale.exists()
    assert str(stale) not in a.waiting.peers.peers
    assert b.waiting.peers.address in a.waiting.peers.peers


async def test_a_new_engine_announces_itself_to_those_on_the_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    first = SqliteBroker(path, safety_poll=NO_SAFETY)
    await first.start()
    second = SqliteBroker(path, safety_poll=NO_SAFETY)
    await second.start()
    try:
        await asyncio.sleep(0.05)
        assert second.waiting.peers.address in first.waiting.peers.peers
        await second.prepare("ceo")
        assert await second.receive("ceo", 1, 30) == []
        waiter = asyncio.create_task(second.wait("ceo", None))
        await first.send([_env("ceo")])  # first learnt of second from its hello
        await asyncio.wait_for(waiter, PROMPT)
    finally:
        await first.close()
        await second.close()
    assert not wake_dir(path).exists()  # the last one out removed the folder


async def test_the_safety_poll_catches_a_lost_notification(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    sender = SqliteBroker(path, safety_poll=NO_SAFETY)
    waiting = SqliteBroker(path, safety_poll=0.1)
    await sender.start()
    await waiting.start()
    try:
        sender.waiting.peers.close()  # its datagrams are lost from now on
        assert await waiting.receive("ceo", 1, 30) == []
        waiter = asyncio.create_task(waiting.wait("ceo", None))
        await sender.send([_env("ceo")])
        await asyncio.wait_for(waiter, 5)
        assert len(await waiting.receive("ceo", 1, 30)) == 1
    finally:
        await sender.close()
        await waiting.close()


async def test_a_delay_set_by_another_engine_wakes_the_waiter_when_due(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "shared.db"
    a = SqliteBroker(path, clock=clock, safety_poll=NO_SAFETY)
    b = SqliteBroker(path, clock=clock, safety_poll=NO_SAFETY)
    await a.start()
    await b.start()
    try:
        assert await b.receive("ceo", 1, 30) == []
        waiter = asyncio.create_task(b.wait("ceo", None))
        await a.send([_env("ceo", available_at=clock.now() + 5)])
        await asyncio.wait_for(waiter, PROMPT)  # woken by the datagram: look again
        assert await b.receive("ceo", 1, 30) == []  # not yet: it learns the due time
        waiter = asyncio.create_task(b.wait("ceo", None))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        clock.advance(5.1)
        await asyncio.wait_for(waiter, PROMPT)
        assert len(await b.receive("ceo", 1, 30)) == 1
    finally:
        await a.close()
        await b.close()


async def test_due_times_of_many_queues_share_one_timer_task(tmp_path: Path) -> None:
    clock = ManualClock()
    broker = SqliteBroker(tmp_path / "q.db", clock=clock, safety_poll=NO_SAFETY)
    queues = [f"a{i}" for i in range(100)]
    now = clock.now()
    await broker.send([_env(q, available_at=now + i + 1) for i, q in enumerate(queues)])
    for q in queues:
        assert await broker.receive(q, 1, 30) == []
    waiters = {q: asyncio.create_task(broker.wait(q, None)) for q in queues}
    await asyncio.sleep(0.05)
    wakeups = broker.waiting.wakeups
    assert wakeups.timer_tasks == 1
    assert wakeups.pending_due == 100
    clock.advance(1.5)
    await asyncio.sleep(0.05)
    assert [q for q, w in waiters.items() if w.done()] == ["a0"]
    clock.advance(100)
    await asyncio.wait_for(asyncio.gather(*waiters.values()), PROMPT)
    await broker.close()


async def test_a_receive_after_one_that_drained_the_queue_costs_no_query(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db", safety_poll=NO_SAFETY)
    await broker.start()
    ops = 0
    put = broker._put

    def counting(op: object) -> None:
        nonlocal ops
        ops += 1
        put(op)  # type: ignore[arg-type]

    broker._put = counting  # type: ignore[assignment]
    try:
        await broker.send([_env("ceo")])
        assert ops == 1
        assert len(await broker.receive("ceo", 10, 30)) == 1  # drains it
        assert await broker.receive("ceo", 10, 30) == []
        assert await broker.receive("ceo", 10, 30) == []
        assert ops == 2  # the empty looks asked nothing
        await broker.send([_env("ceo")])  # a wake-up: the next look asks again
        assert len(await broker.receive("ceo", 10, 30)) == 1
        assert ops == 4
    finally:
        await broker.close()


async def test_a_pull_sees_a_message_whose_notification_was_lost(tmp_path: Path) -> None:
    """A receive may skip the database after one that drained the queue; once anyone
    committed, the safety poll ends that, waiting or not."""
    path = tmp_path / "shared.db"
    sender = SqliteBroker(path, safety_poll=NO_SAFETY)
    puller = SqliteBroker(path, safety_poll=0.1)
    await sender.start()
    await puller.start()
    try:
        sender.waiting.peers.close()
        assert await puller.receive("ceo", 10, 30) == []
        await sender.send([_env("ceo")])
        got: list[object] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = list(await puller.receive("ceo", 10, 30))
            await asyncio.sleep(0.02)
        assert len(got) == 1
    finally:
        await sender.close()
        await puller.close()
