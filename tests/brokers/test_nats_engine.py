"""The NATS JetStream engine, primitive by primitive, against a real nats-server."""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from typing import AsyncIterator, Awaitable, Callable

import nats
import nats.js.errors
import pytest
import pytest_asyncio

from AgentOperatingSystem.messaging.brokers.base import (
    Broker,
    Delivery,
    DirectDelivery,
    Envelope,
    Settlement,
)
from AgentOperatingSystem.messaging.brokers.nats import (
    NatsBroker,
    create_nats_broker,
    parse_nats_url,
    queue_token,
    token_queue,
)
from AgentOperatingSystem.messaging.brokers.nats.setup import create_or_take
from AgentOperatingSystem.messaging.clock import Clock, ManualClock, SystemClock
from AgentOperatingSystem.messaging.errors import (
    BrokerClosedError,
    BrokerUnavailableError,
    ConfigurationError,
    DuplicateMessageError,
    InvalidMessageError,
    MissingExtraError,
    QueueFullError,
)
from tests.support.nats_fixtures import new_nats_namespace
from tests.support.nats_server import NatsServer
from tests.support.ports import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.nats

ODD_NAMES = ["ceo_agent", "_reply.abc", "a b.c*>d", "ünï/cødé ✓", "", "x" * 300]

OpenBroker = Callable[..., Awaitable[NatsBroker]]


def env(queue: str, mid: str, priority: int = 2, **kw: object) -> Envelope:
    body = kw.pop("body", None) or f"body-{mid}".encode()
    return Envelope(queue=queue, message_id=mid, priority=priority, body=body, **kw)  # type: ignore[arg-type]


def settle(delivery: object) -> Settlement:
    return Settlement(delivery.message_id, delivery.token)  # type: ignore[attr-defined]


async def receive_soon(
    broker: NatsBroker, queue: str, max_messages: int = 1, lock: float = 30.0
) -> list[Delivery]:
    """Wait for ``queue`` (bounded) until a receive hands out messages; return them. The
    server's clock (lock expiry, a release delay) is real time, so this waits for real."""
    got: list[Delivery] = []

    async def arrived() -> bool:
        await broker.wait(queue, 0.2)
        got.extend(await broker.receive(queue, max_messages, lock))
        return bool(got)

    await eventually(arrived, 5, f"a delivery from {queue!r}")
    return got


@pytest_asyncio.fixture
async def open_broker(nats_url: str, nats_namespace: str) -> AsyncIterator[OpenBroker]:
    """Open brokers on the session server in this test's namespace; all closed afterwards."""
    opened: list[NatsBroker] = []

    async def factory(clock: Clock | None = None, **kw: object) -> NatsBroker:
        broker = await create_nats_broker(
            nats_url,
            clock=clock or SystemClock(),
            namespace=nats_namespace,
            **kw,  # type: ignore[arg-type]
        )
        opened.append(broker)
        return broker

    yield factory
    for broker in opened:
        await broker.close()


@pytest_asyncio.fixture
async def broker(open_broker: OpenBroker) -> NatsBroker:
    return await open_broker()


@pytest.fixture
def clock() -> ManualClock:
    """The engine clock of ``manual_broker``: it moves only when a test says so."""
    return ManualClock()


@pytest_asyncio.fixture
async def manual_broker(open_broker: OpenBroker, clock: ManualClock) -> NatsBroker:
    """A broker whose clock is ``clock``."""
    return await open_broker(clock)


# ---------------------------------------------------------------------------- pure helpers
def test_url_parsing() -> None:
    assert parse_nats_url("nats://127.0.0.1:4222") == (["nats://127.0.0.1:4222"], {})
    servers, opts = parse_nats_url("nats://h1:1,nats://h2:2?namespace=x&replicas=3")
    assert servers == ["nats://h1:1", "nats://h2:2"]
    assert opts == {"namespace": "x", "replicas": "3"}
    assert parse_nats_url("nats://h1:1,h2:2")[0] == ["nats://h1:1", "nats://h2:2"]
    with pytest.raises(ConfigurationError):
        parse_nats_url("http://h1:1")
    with pytest.raises(ConfigurationError):
        parse_nats_url("nats://h1:1?bogus=1")
    with pytest.raises(ConfigurationError):
        parse_nats_url("?namespace=x")


@pytest.mark.parametrize("name", ODD_NAMES)
def test_queue_token_is_subject_safe_and_reversible(name: str) -> None:
    token = queue_token(name)
    assert token and not set(token) & set(". *>\t\r\n")
    assert token_queue(token) == name


def test_import_guard_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    modname = "AgentOperatingSystem.messaging.brokers.nats"
    original = sys.modules[modname]
    monkeypatch.setitem(sys.modules, "nats", None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, modname)
    try:
        with pytest.raises(MissingExtraError) as info:
            importlib.import_module(modname)
        assert info.value.extra == "nats"
        assert "aos-messaging[nats]" in str(info.value)
    finally:
        sys.modules[modname] = original


async def test_bad_options_and_unreachable_server() -> None:
    with pytest.raises(ConfigurationError):
        await create_nats_broker("nats://127.0.0.1:1", clock=SystemClock(), namespace="a.b")
    with pytest.raises(ConfigurationError):
        await create_nats_broker("nats://127.0.0.1:1?replicas=9", clock=SystemClock())
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError):
        await create_nats_broker(
            f"nats://127.0.0.1:{free_port()}", clock=SystemClock(), connect_timeout=0.5
        )
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------------- creating streams
def _bad_request(err_code: int) -> Exception:
    return nats.js.errors.BadRequestError(code=400, err_code=err_code, description="refused")


async def test_create_takes_the_stream_a_concurrent_create_is_making() -> None:
    """ "Subjects overlap" while another process creates the same stream: take that stream."""
    calls: list[str] = []
    made = False

    async def add() -> str:
        calls.append("add")
        raise _bad_request(10065)

    async def existing() -> str:
        nonlocal made
        calls.append("look")
        if not made:  # the other create is not done on the first look
            made = True
            raise nats.js.errors.NotFoundError(code=404, err_code=10059)
        return "theirs"

    assert await create_or_take("S", add, existing) == "theirs"
    assert calls == ["add", "look", "add", "look"]


async def test_create_name_in_use_takes_it_other_refusals_pass() -> None:
    async def in_use() -> str:
        raise _bad_request(10058)

    async def other() -> str:
        raise _bad_request(10052)

    async def existing() -> str:
        return "existing"

    assert await create_or_take("S", in_use, existing) == "existing"
    with pytest.raises(nats.js.errors.BadRequestError):
        await create_or_take("S", other, existing)


async def test_subjects_of_a_foreign_stream_are_a_configuration_error(
    nats_url: str, nats_namespace: str
) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await js.add_stream(name=f"{nats_namespace}_foreign", subjects=[f"{nats_namespace}.q.x"])
        with pytest.raises(ConfigurationError, match="overlap"):
            await create_nats_broker(nats_url, clock=SystemClock(), namespace=nats_namespace)
    finally:
        await js.delete_stream(f"{nats_namespace}_foreign")
        await nc.close()


async def test_many_brokers_starting_at_once_on_a_new_namespace_all_start(nats_url: str) -> None:
    """Brokers opened at once on a new namespace race to create its streams and buckets."""
    opened: list[NatsBroker] = []
    try:
        for _ in range(12):
            namespace = new_nats_namespace()
            outcomes = await asyncio.gather(
                *(
                    create_nats_broker(nats_url, clock=SystemClock(), namespace=namespace)
                    for _ in range(8)
                ),
                return_exceptions=True,
            )
            brokers = [b for b in outcomes if isinstance(b, NatsBroker)]
            opened += brokers
            assert brokers == outcomes, [e for e in outcomes if e not in brokers]
            assert await brokers[0].send([env("q", "m1")]) == [True]
            assert [d.message_id for d in await brokers[-1].receive("q", 1, 30)] == ["m1"]
    finally:
        one_per_namespace = {broker.namespace: broker for broker in opened}
        for broker in one_per_namespace.values():
            await broker.drop_namespace()
        for broker in opened:
            await broker.close()


# ---------------------------------------------------------------------------- send/receive
async def test_is_a_broker(broker: NatsBroker) -> None:
    assert isinstance(broker, Broker)
    assert broker.needs_bytes is True


async def test_offers_direct_delivery(broker: NatsBroker) -> None:
    """The optional capability the bus uses for requests and their answers, by type."""
    direct: DirectDelivery = broker  # checked statically too
    assert isinstance(direct, DirectDelivery)


async def test_priority_then_fifo(broker: NatsBroker) -> None:
    q = "ceo_agent"
    order = [("n1", 2), ("l1", 4), ("c1", 0), ("n2", 2), ("h1", 1), ("c2", 0), ("n3", 2)]
    assert await broker.send([env(q, mid, p) for mid, p in order]) == [True] * len(order)
    got = await broker.receive(q, 10, 30)
    assert [d.message_id for d in got] == ["c1", "c2", "h1", "n1", "n2", "n3", "l1"]
    first = got[0]
    assert first.body == b"body-c1" and first.message is None and first.attempts == 1
    assert first.priority == 0 and first.queue == q and first.enqueued_at > 0
    assert await broker.receive(q, 10, 30) == []  # all locked


async def test_one_at_a_time_respects_priority(broker: NatsBroker) -> None:
    q = "agent"
    await broker.send([env(q, "low", 4)])
    await broker.send([env(q, "crit", 0)])
    await broker.send([env(q, "norm", 2)])
    seen = []
    for _ in range(3):
        [d] = await broker.receive(q, 1, 30)
        seen.append(d.message_id)
        assert await broker.ack(q, [settle(d)]) == [True]
    assert seen == ["crit", "norm", "low"]


async def test_never_locks_more_than_asked(open_broker: OpenBroker) -> None:
    a, b = await open_broker(), await open_broker()
    q = "work"
    await a.send([env(q, f"m{i}") for i in range(10)])
    got = await a.receive(q, 3, 30)
    assert [d.message_id for d in got] == ["m0", "m1", "m2"]
    assert await a.depth(q) == 10
    rest = await b.receive(q, 100, 30)
    assert [d.message_id for d in rest] == [f"m{i}" for i in range(3, 10)]


async def test_ack_removes_and_stale_tokens_fail(broker: NatsBroker) -> None:
    q = "acks"
    await broker.send([env(q, "a"), env(q, "b")])
    da, db = await broker.receive(q, 2, 30)
    assert await broker.ack(q, [settle(da), Settlement("nope", "1.1")]) == [True, False]
    assert await broker.ack(q, [settle(da)]) == [False]  # already settled
    assert await broker.ack("other", [settle(db)]) == [False]  # wrong queue
    assert await broker.depth(q) == 1
    assert await broker.ack(q, [settle(db)]) == [True]
    assert await broker.depth(q) == 0
    assert await broker.release(q, settle(db)) is False
    assert await broker.dead_letter(q, settle(db), reason="x") is False


async def test_two_consumers_share_without_duplicates(open_broker: OpenBroker) -> None:
    a, b = await open_broker(), await open_broker()
    q = "shared"
    await a.send([env(q, f"m{i}") for i in range(40)])
    seen: list[str] = []

    async def drain(broker: NatsBroker) -> None:
        while True:
            got = await broker.receive(q, 3, 30)
            if not got:
                return
            seen.extend(d.message_id for d in got)
            assert all(await broker.ack(q, [settle(d) for d in got]))

    await asyncio.gather(drain(a), drain(b))
    assert sorted(seen) == sorted(f"m{i}" for i in range(40))


# ---------------------------------------------------------------------------- nack / locks
async def test_release_with_delay_and_error(broker: NatsBroker) -> None:
    q = "retry"
    await broker.send([env(q, "m")])
    [d] = await broker.receive(q, 1, 30)
    delay = 0.6
    assert await broker.release(q, settle(d), delay=delay, error="boom") is True
    assert await broker.receive(q, 1, 30) == []
    started = time.monotonic()
    [d2] = await receive_soon(broker, q)
    assert time.monotonic() - started >= delay - 0.1
    assert d2.message_id == "m" and d2.attempts == 2 and d2.last_error == "boom"
    assert d2.token != d.token
    assert await broker.ack(q, [settle(d)]) == [False]
    assert await broker.release(q, settle(d2)) is True  # no delay: at once
    [d3] = await broker.receive(q, 1, 30)
    assert d3.attempts == 3 and d3.last_error is None
    assert await broker.ack(q, [settle(d3)]) == [True]


async def test_lock_expiry_redelivers(open_broker: OpenBroker) -> None:
    a, b = await open_broker(), await open_broker()
    q = "locks"
    lock = 0.5  # the consumer's ack_wait: the server's real clock runs it out
    await a.send([env(q, "m")])
    started = time.monotonic()
    [d] = await a.receive(q, 1, lock)
    assert await b.receive(q, 1, lock) == []
    [d2] = await receive_soon(b, q, lock=lock)
    assert time.monotonic() - started >= lock * 0.9  # not before the lock ran out
    assert d2.message_id == "m" and d2.attempts == 2
    assert await a.ack(q, [settle(d)]) == [False]  # lock lost
    assert await b.ack(q, [settle(d2)]) == [True]


async def test_lock_expiry_follows_the_engine_clock(
    manual_broker: NatsBroker, clock: ManualClock
) -> None:
    q = "manual"
    await manual_broker.send([env(q, "m")])
    [d] = await manual_broker.receive(q, 1, 30)
    clock.advance(29)
    assert await manual_broker.receive(q, 1, 30) == []
    assert await manual_broker.renew(q, [settle(d)], 30) == [True]
    clock.advance(29)
    assert await manual_broker.receive(q, 1, 30) == []  # renewed
    clock.advance(2)
    [d2] = await manual_broker.receive(q, 1, 30)  # lock expired on the clock: handed back at once
    assert d2.attempts == 2
    assert await manual_broker.ack(q, [settle(d)]) == [False]
    assert await manual_broker.renew(q, [settle(d)], 30) == [False]
    assert await manual_broker.ack(q, [settle(d2)]) == [True]


async def test_renew_keeps_the_lock(open_broker: OpenBroker) -> None:
    a, b = await open_broker(), await open_broker()
    q = "renew"
    lock = 0.8  # renewed every half lock, for longer than one lock
    await a.send([env(q, "m")])
    started = time.monotonic()
    [d] = await a.receive(q, 1, lock)
    for _ in range(3):
        await asyncio.sleep(lock / 2)  # real time: the server's ack_wait runs on it
        assert await a.renew(q, [settle(d)], lock) == [True]
    assert time.monotonic() - started > lock  # the lock outlived its ack_wait
    assert await b.receive(q, 1, lock) == []
    assert await a.ack(q, [settle(d)]) == [True]


async def test_lock_seconds_change_updates_the_consumer(broker: NatsBroker) -> None:
    q = "relock"
    short = 0.4
    # Real time: the server runs the consumer's ack_wait out. The first wait must outlast
    # the short lock before the next receive changes ack_wait (a changed ack_wait also
    # applies to the message still pending), the second show that the new lock holds.
    await broker.send([env(q, "m")])
    [d] = await broker.receive(q, 1, short)
    await asyncio.sleep(short * 1.5)
    [d2] = await broker.receive(q, 1, 30)  # lock of 0.4 s ran out; new lock is 30 s
    assert d2.attempts == 2
    await asyncio.sleep(short * 1.5)
    assert await broker.receive(q, 1, 30) == []
    assert await broker.ack(q, [settle(d2)]) == [True]
    assert await broker.ack(q, [settle(d)]) == [False]


async def test_delayed_message_is_held_back(broker: NatsBroker) -> None:
    q = "later"
    now, delay = time.time(), 0.7
    await broker.send([env(q, "later", available_at=now + delay), env(q, "now")])
    got = await broker.receive(q, 5, 30)
    assert [d.message_id for d in got] == ["now"]
    assert await broker.depth(q) == 2
    late = await receive_soon(broker, q, 5)
    assert [d.message_id for d in late] == ["later"]
    assert time.time() >= now + delay
    assert late[0].attempts == 1  # the early hand-back does not count


# ---------------------------------------------------------------------------- dead letters
async def test_dead_letter_list_resubmit_purge(broker: NatsBroker) -> None:
    q = "dlq.agent"
    await broker.send([env(q, "a", 1, expires_at=2e9), env(q, "b"), env(q, "c")])
    da, db, dc = await broker.receive(q, 3, 30)
    assert await broker.dead_letter(q, settle(da), reason="max_attempts", error="bad\r\nthing")
    assert await broker.dead_letter(q, settle(db), reason="expired")
    assert await broker.depth(q) == 1
    assert await broker.dead_letter_depth(q) == 2
    letters = await broker.dead_letters(q)
    assert [x.message_id for x in letters] == ["a", "b"]
    first = letters[0]
    assert first.reason == "max_attempts" and first.error == "bad\r\nthing"
    assert first.attempts == 1 and first.priority == 1 and first.body == b"body-a"
    assert first.queue == q and first.dead_lettered_at >= first.enqueued_at > 0
    assert letters[1].error is None
    assert [x.message_id for x in await broker.dead_letters(q, limit=1)] == ["a"]

    assert await broker.resubmit(q, "a") is True
    assert await broker.resubmit(q, "a") is False
    assert await broker.dead_letter_depth(q) == 1
    [back] = await broker.receive(q, 1, 30)
    assert back.message_id == "a" and back.attempts == 1 and back.priority == 1
    assert back.body == b"body-a" and back.expires_at is None  # as the memory engine

    assert await broker.purge_dead_letters(q) == 1
    assert await broker.dead_letter_depth(q) == 0
    assert await broker.dead_letters(q) == []
    assert await broker.ack(q, [settle(back), settle(dc)]) == [True, True]


async def test_put_dead_letter_is_stored_as_dead_letter_stores_it(open_broker: OpenBroker) -> None:
    """Straight into the dead-letter stream with the fields ``dead_letter`` stores, so
    listing, resubmitting and purging treat both alike; ids are checked across processes."""
    a, b = await open_broker(), await open_broker()
    q = "put ✓.dead"
    await a.send([env(q, "seen")])
    [d] = await a.receive(q, 1, 30)
    assert await a.dead_letter(q, settle(d), reason="max_attempts")
    # an id dead-lettered the usual way (by another process) is there already: refused
    assert await b.put_dead_letter(env(q, "seen"), reason="unreachable") is False
    put = env(q, "p1", 1, body=b"payload", expires_at=2e9)
    assert await b.put_dead_letter(put, reason="unreachable", error="refused\r\nnow", attempts=3)
    assert (await a.depth(q), await a.dead_letter_depth(q)) == (0, 2)
    assert await a.receive(q, 10, 30) == []  # never deliverable
    seen, letter = await a.dead_letters(q)
    assert seen.message_id == "seen"
    assert (letter.queue, letter.message_id, letter.priority, letter.body) == (
        q,
        "p1",
        1,
        b"payload",
    )
    assert (letter.reason, letter.error, letter.attempts) == ("unreachable", "refused\r\nnow", 3)
    assert letter.dead_lettered_at >= letter.enqueued_at > 0
    # two processes putting one id at once: one of them stores it
    twin = env(q, "p2")
    both = await asyncio.gather(
        a.put_dead_letter(twin, reason="r"), b.put_dead_letter(twin, reason="r")
    )
    assert sorted(both) == [False, True]
    assert await a.dead_letter_depth(q) == 3
    # resubmitted, then put again at once (inside the server's duplicate window): stored
    assert await a.resubmit(q, "p1") is True
    [back] = await a.receive(q, 1, 30)
    assert (back.message_id, back.priority, back.body, back.attempts) == ("p1", 1, b"payload", 1)
    assert await b.put_dead_letter(put, reason="unreachable again") is True
    assert [x.reason for x in await a.dead_letters(q)] == ["max_attempts", "r", "unreachable again"]
    assert await a.purge_dead_letters(q) == 3
    assert await a.ack(q, [settle(back)]) == [True]
    with pytest.raises(InvalidMessageError):
        await a.put_dead_letter(Envelope(q, "no-body", 2), reason="r")


# ---------------------------------------------------------------------------- dedup / ids
async def test_dedup_key_within_window(manual_broker: NatsBroker, clock: ManualClock) -> None:
    q = "dedup"
    first = env(q, "m1", dedup_key="k")
    assert await manual_broker.send([first], dedup_window=60) == [True]
    assert await manual_broker.send([env(q, "m2", dedup_key="k")], dedup_window=60) == [False]
    assert await manual_broker.send([env("elsewhere", "m2", dedup_key="k")], dedup_window=60) == [
        True
    ]
    assert await manual_broker.send([env(q, "m3", dedup_key="k")], dedup_window=0) == [True]
    clock.advance(61)
    assert await manual_broker.send([env(q, "m4", dedup_key="k")], dedup_window=60) == [True]
    got = await manual_broker.receive(q, 10, 30)
    assert [d.message_id for d in got] == ["m1", "m3", "m4"]


async def test_live_duplicate_id_is_refused(broker: NatsBroker) -> None:
    q = "ids"
    await broker.send([env(q, "same")])
    with pytest.raises(DuplicateMessageError):
        await broker.send([env(q, "same")])
    assert await broker.send([env("other", "same")]) == [True]  # ids are per queue
    [d] = await broker.receive(q, 1, 30)
    assert await broker.ack(q, [settle(d)]) == [True]
    assert await broker.send([env(q, "same")]) == [True]  # consumed: the id is free again
    assert await broker.depth(q) == 1


async def test_depth_and_max_depth(broker: NatsBroker) -> None:
    q = "full"
    await broker.send([env(q, "a"), env(q, "b", 0)], max_depth=3)
    [d] = await broker.receive(q, 1, 30)
    assert await broker.depth(q) == 2  # locked messages count
    with pytest.raises(QueueFullError):
        await broker.send([env(q, "c"), env(q, "d")], max_depth=3)
    assert await broker.depth(q) == 2  # nothing enqueued
    await broker.send([env(q, "c")], max_depth=3)
    assert await broker.depth(q) == 3
    await broker.ack(q, [settle(d)])
    assert await broker.depth(q) == 2


# ---------------------------------------------------------------------------- bindings etc.
async def test_bindings_are_shared(open_broker: OpenBroker) -> None:
    a, b = await open_broker(), await open_broker()
    assert await a.bindings("task.created") == []
    await a.bind("task.created", "q1")
    await b.bind("task.created", "q2")
    await a.bind("task.created", "q1")  # idempotent
    await a.bind("other", "q1")
    assert await b.bindings("task.created") == ["q1", "q2"]
    await b.unbind("task.created", "q1")
    await b.unbind("task.created", "nope")
    assert await a.bindings("task.created") == ["q2"]
    assert await a.bindings("other") == ["q1"]


async def test_processed_key_and_outbox(manual_broker: NatsBroker, clock: ManualClock) -> None:
    q = "eo"
    await manual_broker.send([env(q, "in")])
    [d] = await manual_broker.receive(q, 1, 30)
    assert await manual_broker.is_processed("key-1") is False
    outbox = [env("out", "o1"), env("out", "o2", 0)]
    assert await manual_broker.ack(
        q, [settle(d)], processed_key="key-1", processed_ttl=100, outbox=outbox
    )
    assert await manual_broker.is_processed("key-1") is True
    got = await manual_broker.receive("out", 10, 30)
    assert [x.message_id for x in got] == ["o2", "o1"]
    assert await manual_broker.depth(q) == 0
    clock.advance(101)
    assert await manual_broker.is_processed("key-1") is False
    # a lost lock records nothing
    await manual_broker.send([env(q, "in2")])
    [d2] = await manual_broker.receive(q, 1, 30)
    clock.advance(31)
    assert await manual_broker.ack(
        q, [settle(d2)], processed_key="key-2", outbox=[env("out", "o3")]
    ) == [False]
    assert await manual_broker.is_processed("key-2") is False
    assert await manual_broker.depth("out") == 2


async def test_outbox_retry_is_deduplicated(broker: NatsBroker) -> None:
    q = "eo2"
    await broker.send([env(q, "in")])
    [d] = await broker.receive(q, 1, 30)
    outbox = [env("out2", "o1")]
    # a first attempt published the outbox then crashed before the ack:
    await broker._publisher.publish_envelope(
        outbox[0], msg_id="x", duplicate_ok=True, enqueued_at=1.0
    )
    assert await broker.ack(q, [settle(d)], processed_key="k", outbox=outbox) == [True]
    # the retry uses the same derived id, so a second ack attempt adds nothing
    await broker.send([env(q, "in-again")])
    [d2] = await broker.receive(q, 1, 30)
    assert await broker.ack(q, [settle(d2)], processed_key="k", outbox=outbox) == [True]
    assert await broker.depth("out2") == 2  # "x" + one outbox copy


async def test_wait_wakes_on_publish_from_another_process(open_broker: OpenBroker) -> None:
    a, b = await open_broker(), await open_broker()
    q = "_reply.abc"
    started = time.monotonic()
    await a.wait(q, 0.3)
    assert 0.25 <= time.monotonic() - started < 2
    waiter = asyncio.create_task(a.wait(q, 10))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await b.send([env(q, "ping")])
    await asyncio.wait_for(waiter, 5)
    assert time.monotonic() - started < 1
    assert [d.message_id for d in await a.receive(q, 1, 30)] == ["ping"]


async def test_odd_queue_names(broker: NatsBroker) -> None:
    for i, name in enumerate(ODD_NAMES):
        await broker.send([env(name, f"m{i}")])
    [d] = await broker.receive(ODD_NAMES[3], 5, 30)
    await broker.dead_letter(ODD_NAMES[3], settle(d), reason="r")
    assert sorted(await broker.queues()) == sorted(ODD_NAMES)
    for i, name in enumerate(ODD_NAMES):
        if i != 3:
            [d] = await broker.receive(name, 5, 30)
            assert d.message_id == f"m{i}" and d.queue == name
    await broker.delete_queue(ODD_NAMES[0])
    await broker.delete_queue(ODD_NAMES[3])
    assert await broker.depth(ODD_NAMES[0]) == 0
    assert await broker.dead_letter_depth(ODD_NAMES[3]) == 0
    assert ODD_NAMES[0] not in await broker.queues()
    assert ODD_NAMES[3] not in await broker.queues()
    await broker.send([env(ODD_NAMES[0], "again")])  # a deleted queue comes back on use
    assert [d.message_id for d in await broker.receive(ODD_NAMES[0], 5, 30)] == ["again"]


async def test_close_then_broker_closed(broker: NatsBroker) -> None:
    await broker.send([env("q", "m")])
    await broker.close()
    await broker.close()  # idempotent
    calls = [
        broker.send([env("q", "n")]),
        broker.receive("q", 1, 30),
        broker.ack("q", [Settlement("m", "1.1")]),
        broker.release("q", Settlement("m", "1.1")),
        broker.renew("q", [Settlement("m", "1.1")], 30),
        broker.dead_letter("q", Settlement("m", "1.1"), reason="x"),
        broker.put_dead_letter(env("q", "n"), reason="x"),
        broker.dead_letters("q"),
        broker.resubmit("q", "m"),
        broker.purge_dead_letters("q"),
        broker.depth("q"),
        broker.dead_letter_depth("q"),
        broker.queues(),
        broker.delete_queue("q"),
        broker.is_processed("k"),
        broker.bind("t", "q"),
        broker.unbind("t", "q"),
        broker.bindings("t"),
        broker.wait("q", 0.1),
        broker.listen_direct("q", _take_all),
        broker.send_direct(env("q", "n")),
        broker.hand_off(env("q", "n")),
    ]
    for call in calls:
        with pytest.raises(BrokerClosedError):
            await call


async def _take_all(body: bytes) -> bool:
    return True


async def test_close_hands_back_unsettled_locks(open_broker: OpenBroker) -> None:
    a, b = await open_broker(), await open_broker()
    await a.send([env("handback", "m")])
    assert len(await a.receive("handback", 1, 30)) == 1
    await a.close()
    [d2] = await b.receive("handback", 1, 30)
    assert d2.message_id == "m" and d2.attempts == 2


# ---------------------------------------------------------------------------- durability
async def test_restart_keeps_messages_and_dead_letters(nats_private_server: NatsServer) -> None:
    url = nats_private_server.url + "?namespace=durable"
    broker = await create_nats_broker(url, clock=SystemClock())
    try:
        await broker.send([env("q", f"m{i}", i % 5) for i in range(5)])
        [d] = await broker.receive("q", 1, 30)
        await broker.dead_letter("q", settle(d), reason="r")
        await broker.bind("topic", "q")
    finally:
        await broker.close()
    nats_private_server.stop()
    nats_private_server.restart()
    broker = await create_nats_broker(url, clock=SystemClock())
    try:
        assert await broker.depth("q") == 4
        assert [x.message_id for x in await broker.dead_letters("q")] == ["m0"]
        assert await broker.bindings("topic") == ["q"]
        got = await broker.receive("q", 10, 30)
        assert [x.message_id for x in got] == ["m1", "m2", "m3", "m4"]
    finally:
        await broker.close()


async def test_survives_a_server_restart_while_open(nats_private_server: NatsServer) -> None:
    broker = await create_nats_broker(nats_private_server.url, clock=SystemClock())
    try:
        await broker.send([env("q", "before")])
        nats_private_server.kill()
        nats_private_server.restart()
        # publishes are retried while the client reconnects
        assert await broker.send([env("q", "after")]) == [True]
        got: list[Delivery] = []

        async def both() -> bool:
            got.extend(await broker.receive("q", 10, 30))
            if len(got) < 2:
                await broker.wait("q", 0.2)
            return len(got) >= 2

        await eventually(both, 10, "both messages after the restart")
        assert sorted(d.message_id for d in got) == ["after", "before"]
    finally:
        await broker.close()
