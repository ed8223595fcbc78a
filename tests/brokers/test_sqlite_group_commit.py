"""The SQLite engine's group commit: sends queued while a transaction runs are inserted
together, and one failing send (a live duplicate id, a full queue) fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import AsyncIterator

import pytest

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.brokers.base import Envelope
from AgentOperatingSystem.messaging.brokers.sqlite import SqliteBroker
from AgentOperatingSystem.messaging.brokers.sqlite.writer import Op
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.codec.envelope import encode
from AgentOperatingSystem.messaging.errors import (
    BrokerError,
    DuplicateMessageError,
    QueueFullError,
)
from AgentOperatingSystem.messaging.types import Message, MessageType

pytestmark = pytest.mark.timeout(60)


def _env(queue: str, i: int, message_id: str | None = None) -> Envelope:
    m = Message(
        message_type=MessageType.TASK,
        sender_id="t",
        recipient_id=queue,
        content={"i": i},
        **({"message_id": message_id} if message_id else {}),
    )
    return Envelope(queue, m.message_id, m.priority.value, encode(m))


class _Held:
    """Holds the engine's writer thread inside a transaction until released, so every send
    made meanwhile lands in the next group; counts the size of each group it commits."""

    def __init__(self, broker: SqliteBroker) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.groups: list[int] = []
        writer = broker._writer
        original = writer._execute

        def counting(conn: sqlite3.Connection, group: list[Op]) -> None:
            self.groups.append(len(group))
            original(conn, group)

        writer._execute = counting  # type: ignore[method-assign]

        def hold(_conn: sqlite3.Connection) -> None:
            self.entered.set()
            self.gate.wait(10)

        self.task = asyncio.ensure_future(broker._call(hold))

    async def release(self) -> None:
        self.gate.set()
        await self.task


async def _hold(broker: SqliteBroker) -> _Held:
    """Hold the worker, and return once it is inside the holding transaction (sends made
    before that could share the holding group instead of the next one)."""
    held = _Held(broker)
    assert await asyncio.to_thread(held.entered.wait, 10)
    return held


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[SqliteBroker]:
    b = SqliteBroker(tmp_path / "g.db")
    await b.start()
    try:
        yield b
    finally:
        await b.close()


async def test_concurrent_sends_share_one_group_and_all_arrive(broker: SqliteBroker) -> None:
    held = await _hold(broker)
    envs = [_env("q", i) for i in range(40)]
    sends = [asyncio.ensure_future(broker.send([e])) for e in envs]
    await held.release()
    assert await asyncio.gather(*sends) == [[True]] * 40
    assert max(held.groups) == 40  # the forty sends were one transaction
    assert await broker.depth("q") == 40
    got = await broker.receive("q", 100, 30.0)
    assert [(d.message_id, d.body) for d in got] == [(e.message_id, e.body) for e in envs]


async def test_a_live_duplicate_fails_alone_in_its_group(broker: SqliteBroker) -> None:
    first = _env("q", 0, message_id="dup")
    assert await broker.send([first]) == [True]
    held = await _hold(broker)
    sends = [asyncio.ensure_future(broker.send([_env("q", i)])) for i in range(1, 6)]
    twin = asyncio.ensure_future(broker.send([_env("q", 99, message_id="dup")]))
    sends += [asyncio.ensure_future(broker.send([_env("q", i)])) for i in range(6, 11)]
    await held.release()
    assert await asyncio.gather(*sends) == [[True]] * 10
    with pytest.raises(DuplicateMessageError):
        await twin
    assert await broker.depth("q") == 11
    bodies = {d.message_id: d.body for d in await broker.receive("q", 100, 30.0)}
    assert len(bodies) == 11 and bodies["dup"] == first.body  # the first copy, untouched


async def test_an_envelope_without_body_fails_alone_in_its_group(broker: SqliteBroker) -> None:
    held = await _hold(broker)
    before = [asyncio.ensure_future(broker.send([_env("q", i)])) for i in range(3)]
    bare = asyncio.ensure_future(broker.send([Envelope("q", "no-body", 2)]))
    after = [asyncio.ensure_future(broker.send([_env("q", i)])) for i in range(3, 6)]
    await held.release()
    assert await asyncio.gather(*before, *after) == [[True]] * 6
    with pytest.raises(BrokerError, match="needs encoded envelopes"):
        await bare
    assert max(held.groups) == 7
    assert await broker.depth("q") == 6


async def test_a_full_queue_refuses_exactly_the_sends_over_the_limit(
    broker: SqliteBroker,
) -> None:
    held = await _hold(broker)
    envs = [_env("q", i) for i in range(12)]
    sends = [asyncio.ensure_future(broker.send([e], max_depth=7)) for e in envs]
    await held.release()
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    assert outcomes[:7] == [[True]] * 7  # in the order they were made
    assert all(isinstance(o, QueueFullError) for o in outcomes[7:])
    assert await broker.depth("q") == 7
    got = await broker.receive("q", 100, 30.0)
    assert [d.message_id for d in got] == [e.message_id for e in envs[:7]]


async def test_bus_publishes_from_many_tasks_each_get_their_result(tmp_path: Path) -> None:
    cfg = MessageBusConfig(broker_url=f"sqlite:///{tmp_path / 'b.db'}", max_queue_size=30)
    async with MessageBus(cfg) as bus:
        msgs = [
            Message(message_type=MessageType.TASK, sender_id="t", recipient_id="a", content={})
            for _ in range(40)
        ]
        outcomes = await asyncio.gather(*(bus.publish(m) for m in msgs), return_exceptions=True)
        accepted = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, QueueFullError)]
        assert len(accepted) == 30 and len(refused) == 10
        assert all(r.recipients == ("a",) and not r.duplicate for r in accepted)  # type: ignore[union-attr]
        assert await bus.queue_depth("a") == 30
        got = await bus.get_messages("a", limit=100)
        assert {m.message_id for m in got} == {r.message_id for r in accepted}  # type: ignore[union-attr]
