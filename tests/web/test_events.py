"""The live-event hub behind ``/admin/tail``: filters, the bounded queue, the end of stream,
and listening to the bus's telemetry only while someone watches."""

from __future__ import annotations

import json

from AgentOperatingSystem.messaging.observability.telemetry import BusTelemetry
from AgentOperatingSystem.messaging.web.events import CLIENT_QUEUE, EventHub, StreamClient


def _events(chunks: list[bytes]) -> list[dict[str, object]]:
    out = []
    for chunk in chunks:
        data = [line[6:] for line in chunk.decode().splitlines() if line.startswith("data: ")]
        out.append(json.loads("".join(data)))
    return out


def test_a_client_keeps_only_the_events_its_filter_wants() -> None:
    client = StreamClient("a1", "task")
    client.offer({"event": "published", "message_type": "task", "queues": ["a1", "a2"]})
    client.offer({"event": "handled", "message_type": "task", "agent": "a2"})
    client.offer({"event": "handled", "message_type": "query", "agent": "a1"})
    client.offer({"event": "published", "message_type": "task", "sender": "a1"})
    chunks, ended = client.take()
    assert not ended
    assert [e["event"] for e in _events(chunks)] == ["published", "published"]
    assert client.take() == ([], False)


def test_a_slow_client_loses_the_oldest_events_and_is_told_how_many() -> None:
    client = StreamClient(None, None)
    for n in range(CLIENT_QUEUE + 3):
        client.offer({"event": "published", "n": n, "seq": n})
    chunks, ended = client.take()
    assert not ended
    assert chunks[0].startswith(b"event: dropped\n")
    events = _events(chunks)
    assert events[0] == {"event": "dropped", "count": 3}
    assert [e["n"] for e in events[1:]] == list(range(3, CLIENT_QUEUE + 3))
    assert chunks[1].startswith(b"id: 3\n")
    assert client.dropped == 0


def test_closing_the_hub_ends_every_stream_after_its_waiting_events() -> None:
    hub = EventHub(BusTelemetry())
    client = hub.connect(None, None)
    client.offer({"event": "published"})
    hub.close()
    assert hub.closed and client.wakeup.is_set()
    chunks, ended = client.take()
    assert ended and [e["event"] for e in _events(chunks)] == ["published"]


def test_the_hub_listens_only_while_a_client_is_connected() -> None:
    telemetry = BusTelemetry()
    hub = EventHub(telemetry)
    assert not telemetry.per_message
    first = hub.connect(None, None)
    second = hub.connect("a1", None)
    assert telemetry.per_message and hub.clients == 2
    telemetry.emit({"event": "published", "recipient": "a1"})
    telemetry.emit({"event": "published", "recipient": "a2"})
    assert [e["seq"] for e in _events(first.take()[0])] == [1, 2]
    assert [e["seq"] for e in _events(second.take()[0])] == [1]
    hub.disconnect(first)
    assert telemetry.per_message
    hub.disconnect(second)
    assert not telemetry.per_message and hub.clients == 0
    telemetry.emit({"event": "published"})
    assert second.take() == ([], False)
