"""Truthful publish outcomes on NATS (issue 20, item 4): a publish that was sent and never
acknowledged raises :class:`PublishOutcomeUnknownError` with its message id, and sending it
again with the same id stores it once; a publish that certainly did not leave raises plain
:class:`BrokerUnavailableError`. Each test runs its own nats-server, stopped and restarted."""

from __future__ import annotations

import asyncio

import pytest

from AgentOperatingSystem.messaging.brokers.base import Envelope, Settlement
from AgentOperatingSystem.messaging.brokers.nats import NatsBroker, create_nats_broker
from AgentOperatingSystem.messaging.clock import SystemClock
from AgentOperatingSystem.messaging.errors import (
    BrokerUnavailableError,
    PublishOutcomeUnknownError,
)
from tests.support.nats_fixtures import new_nats_namespace
from tests.support.nats_server import NatsServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.nats

#: How long a publish retries here before it gives up (the engine's default is 30 s).
RETRY = 0.6


async def _open(server: NatsServer, namespace: str) -> NatsBroker:
    return await create_nats_broker(
        server.url, clock=SystemClock(), namespace=namespace, retry_seconds=RETRY
    )


async def _disconnected(broker: NatsBroker) -> None:
    nc = broker._conn.nc  # the client notices the server went away on its own
    await eventually(lambda: not nc.is_connected, 10, "the client to notice the outage")


async def _connected(broker: NatsBroker) -> None:
    nc = broker._conn.nc
    await eventually(lambda: nc.is_connected, 20, "the client to reconnect")


async def test_an_outage_publish_is_of_unknown_outcome_and_its_retry_is_stored_once(
    nats_private_server: NatsServer,
) -> None:
    broker = await _open(nats_private_server, new_nats_namespace())
    try:
        q = "ceo"
        await broker.prepare(q)
        nats_private_server.stop()
        await _disconnected(broker)
        env = Envelope(queue=q, message_id="m-1", priority=2, body=b"hello")
        with pytest.raises(PublishOutcomeUnknownError) as caught:
            await broker.send([env])
        assert caught.value.message_id == "m-1"
        assert isinstance(caught.value, BrokerUnavailableError)  # old handlers still catch it
        nats_private_server.restart()
        await _connected(broker)
        # the client wrote the held publish once reconnected: it is stored, and it may be
        # consumed before the caller retries
        got = []

        async def delivered() -> bool:
            got.extend(await broker.receive(q, 10, 30))
            return bool(got)

        await eventually(delivered, 10, "the publish held over the outage")
        assert [d.message_id for d in got] == ["m-1"]
        assert await broker.ack(q, [Settlement(got[0].message_id, got[0].token)]) == [True]
        # the retry with the same id: deduplicated, counted as stored, never a second copy
        assert await broker.send([env]) == [True]
        await asyncio.sleep(0.2)
        assert await broker.receive(q, 10, 30) == []
        assert await broker.depth(q) == 0
    finally:
        await broker.close()


async def test_a_retry_while_the_first_copy_is_still_queued_is_stored_once(
    nats_private_server: NatsServer,
) -> None:
    broker = await _open(nats_private_server, new_nats_namespace())
    try:
        q = "cfo"
        nats_private_server.stop()
        await _disconnected(broker)
        envs = [Envelope(queue=q, message_id=f"b-{i}", priority=2, body=b"x") for i in range(2)]
        with pytest.raises(PublishOutcomeUnknownError):
            await broker.send(envs)  # the pipelined path
        nats_private_server.restart()
        await _connected(broker)
        assert await broker.send(envs) == [True, True]
        await eventually(lambda: broker.depth(q), 10)
        got = await broker.receive(q, 10, 30)
        assert sorted(d.message_id for d in got) == ["b-0", "b-1"]
        assert await broker.depth(q) == 2
    finally:
        await broker.close()


async def test_a_publish_that_never_left_is_plainly_unavailable(
    nats_private_server: NatsServer,
) -> None:
    broker = await _open(nats_private_server, new_nats_namespace())
    try:
        nats_private_server.stop()
        await _disconnected(broker)
        # bigger than the client's reconnect buffer: refused by the client, never written
        big = Envelope(queue="q", message_id="big", priority=2, body=b"x" * (3 * 1024 * 1024))
        with pytest.raises(BrokerUnavailableError) as caught:
            await broker.send([big])
        assert not isinstance(caught.value, PublishOutcomeUnknownError)
    finally:
        await broker.close()
