"""Foreign CloudEvents: a plain event another system wrote (any ``type``; object, string,
other, binary or no ``data``; no AOS attributes) is read as a Message by the documented
mapping, and, put raw into an agent's queue on the memory and SQLite engines, reaches the
agent's handler instead of the dead-letter queue."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.brokers.base import Envelope
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.codec.envelope import (
    decode,
    decode_cloudevent,
    encode,
    is_aos_event,
)
from AgentOperatingSystem.messaging.errors import DecodeError
from AgentOperatingSystem.messaging.types import Message, MessagePriority, MessageType

BASE = {
    "specversion": "1.0",
    "id": "evt-1",
    "source": "https://shop.example.com/orders",
    "type": "com.example.order.created",
    "time": "2026-12-08T01:02:03.5Z",
}


def event(**changes: Any) -> bytes:
    ev = dict(BASE)
    for k, v in changes.items():
        if v is None:
            ev.pop(k, None)
        else:
            ev[k] = v
    return json.dumps(ev).encode()


def test_a_non_aos_type_becomes_an_event_with_its_type_and_data() -> None:
    msg, options = decode_cloudevent(event(data={"order": 7}, subject="o-7", shopid="s1"))
    assert msg.message_type is MessageType.EVENT
    assert msg.content == {"type": "com.example.order.created", "data": {"order": 7}}
    assert msg.message_id == "evt-1"
    assert msg.sender_id == "https://shop.example.com/orders"
    assert msg.timestamp == datetime(2026, 12, 8, 1, 2, 3, 500000, tzinfo=UTC)
    assert msg.priority is MessagePriority.NORMAL and msg.ttl is None
    assert msg.recipient_id is None
    attributes = msg.metadata["cloudevents"]
    assert attributes == {**BASE, "subject": "o-7", "shopid": "s1"}
    assert options.hops == 0 and options.idempotency_key is None


@pytest.mark.parametrize(
    ("data", "content"),
    [
        ("plain text", {"data": "plain text"}),
        ([1, 2], {"data": [1, 2]}),
        (3.5, {"data": 3.5}),
        (None, {}),
    ],
)
def test_string_other_and_absent_data(data: Any, content: dict[str, Any]) -> None:
    body = event(data=data)
    msg, _ = decode_cloudevent(body)
    assert msg.content == {"type": BASE["type"], **content}
    msg, _ = decode_cloudevent(event(data=data, type="aos.query"))
    assert msg.message_type is MessageType.QUERY
    assert msg.content == content


def test_an_aos_type_maps_to_its_message_type() -> None:
    for t in MessageType:
        msg, _ = decode_cloudevent(event(type=f"aos.{t.value}", data={"k": 1}))
        assert msg.message_type is t and msg.content == {"k": 1}
    msg, _ = decode_cloudevent(event(type="aos.nope", data={"k": 1}))
    assert msg.message_type is MessageType.EVENT
    assert msg.content == {"type": "aos.nope", "data": {"k": 1}}


def test_binary_data_and_the_transport_given_id_and_recipient() -> None:
    raw = base64.b64encode(b"\x00\x01\xff").decode()
    msg, _ = decode_cloudevent(
        event(data_base64=raw, time=None), message_id="eng-9", recipient="bob"
    )
    assert msg.content == {"type": BASE["type"], "data_base64": raw}
    assert msg.message_id == "eng-9" and msg.metadata["cloudevents"]["id"] == "evt-1"
    assert msg.recipient_id == "bob"
    assert abs((datetime.now(UTC) - msg.timestamp).total_seconds()) < 60  # no time: now


def test_lower_case_rfc3339_and_the_sdk_structured_event() -> None:
    msg, _ = decode_cloudevent(event(time="2026-12-08t01:02:03z", data={}))
    assert msg.timestamp == datetime(2026, 12, 8, 1, 2, 3, tzinfo=UTC)
    sdk = CloudEvent(
        {"id": "sdk-1", "source": "/sensors/7", "type": "org.example.reading"}, {"celsius": 21}
    )
    msg, _ = decode_cloudevent(JSONFormat().write(sdk))
    assert msg.content == {"type": "org.example.reading", "data": {"celsius": 21}}
    assert msg.sender_id == "/sensors/7"
    head = to_structured(sdk, JSONFormat())
    assert decode_cloudevent(head.body)[0] == msg
    assert decode_cloudevent(json.loads(head.body))[0] == msg  # parsed, as from a batch


def test_binary_mode_as_the_sdk_writes_it() -> None:
    """``attributes``: the ``ce-`` headers without their prefix; the body is the data."""
    for data, ctype, content_data in [
        ({"celsius": 21}, "application/json", {"celsius": 21}),
        ("hello", "text/plain; charset=utf-8", "hello"),
        (b"\x89PNG", "image/png", None),
    ]:
        sdk = CloudEvent(
            {
                "id": "b-1",
                "source": "/s",
                "type": "org.example.blob",
                "datacontenttype": ctype,
                "subject": "x",
            },
            data,
        )
        http = to_binary(sdk, JSONFormat())
        attributes = {k[3:]: v for k, v in http.headers.items() if k.lower().startswith("ce-")}
        msg, _ = decode_cloudevent(
            http.body, attributes=attributes, content_type=http.headers["content-type"]
        )
        assert msg.message_type is MessageType.EVENT
        assert msg.content["type"] == "org.example.blob"
        if content_data is None:
            assert base64.b64decode(msg.content["data_base64"]) == b"\x89PNG"
        else:
            assert msg.content["data"] == content_data
        assert msg.metadata["cloudevents"]["subject"] == "x"


@pytest.mark.parametrize(
    "body",
    [
        event(id=None),
        event(source=None),
        event(type=None),
        event(specversion="0.3"),
        event(id=""),
        event(time="yesterday"),
        event(data={"a": 1}, data_base64="AAAA"),
        event(data_base64="@@"),
        b"[1]",
        b"not json",
    ],
)
def test_malformed_foreign_events_are_refused(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_cloudevent(body)


def test_strict_decode_and_aos_envelopes_are_unchanged() -> None:
    """``decode`` reads AOS envelopes only; an AOS envelope read through
    ``decode_cloudevent`` is what ``decode`` gives (the transport's id does not apply)."""
    with pytest.raises(DecodeError, match="unknown event type"):
        decode(event(data={}))
    m = Message(message_type=MessageType.TASK, sender_id="a", recipient_id="b", content={"x": 1})
    body = encode(m)
    assert is_aos_event(json.loads(body)) and not is_aos_event(BASE)
    assert decode_cloudevent(body, message_id="other", recipient="elsewhere") == decode(body)


def test_an_aos_attribute_makes_an_envelope_strict() -> None:
    """Any ``aos*`` attribute marks an AOS envelope, read by the strict rules."""
    assert decode_cloudevent(event(type="aos.task", data={}))[0].content == {}
    for marked in (event(data={}, aosx="1"), event(type="aos.task", data={}, aospriority=9)):
        with pytest.raises(DecodeError):
            decode_cloudevent(marked)


# ----------------------------------------------------------------------------- engines


async def _deliver_foreign(url: str, data_dir: Path) -> list[Message]:
    """The messages a subscription of ``bob`` is handed for four foreign events sent raw
    (a message is either handed to the handler or dead-lettered, never both)."""
    config = MessageBusConfig(broker_url=url, data_dir=str(data_dir))
    got: asyncio.Queue[Message] = asyncio.Queue()
    async with MessageBus(config) as bus:
        await bus.subscribe("bob", None, got.put)
        bodies = [
            ("evt-1", event(data={"order": 7})),
            ("evt-2", event(id="evt-2", data="text data")),
            ("eng-3", event(id="evt-3", type="aos.task", data={"task": "t"})),
            ("evt-4", event(id="evt-4", data=None, time=None)),
        ]
        await bus.broker.send([Envelope("bob", eid, 2, body=b) for eid, b in bodies])
        return [await asyncio.wait_for(got.get(), 10) for _ in bodies]


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_a_foreign_event_sent_raw_reaches_a_handler(engine: str, tmp_path: Path) -> None:
    url = "memory://" if engine == "memory" else f"sqlite:///{tmp_path / 'q.db'}"
    messages = await _deliver_foreign(url, tmp_path)
    by_id = {m.message_id: m for m in messages}
    assert by_id["evt-1"].content == {"type": BASE["type"], "data": {"order": 7}}
    assert by_id["evt-2"].content == {"type": BASE["type"], "data": "text data"}
    assert by_id["eng-3"].message_type is MessageType.TASK  # filed under the engine's id
    assert by_id["eng-3"].content == {"task": "t"}
    assert by_id["evt-4"].content == {"type": BASE["type"]}
    assert all(m.recipient_id == "bob" for m in messages)


_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_EVENTS = st.fixed_dictionaries(
    {
        "specversion": st.sampled_from(["1.0", "1.0", "0.3", 1]),
        "id": st.text(max_size=6) | _ANY,
        "source": st.sampled_from(["/s", "https://x.example/a", "urn:x:y"]) | st.text(max_size=6),
        "type": st.sampled_from(["aos.task", "aos.event", "aos.", "com.x", "aos.TASK"]) | _ANY,
    },
    optional={
        "time": st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01", "x"]) | _ANY,
        "data": _ANY,
        "data_base64": st.sampled_from(["AAAA", "@@"]) | _ANY,
        "subject": _ANY,
        "datacontenttype": st.sampled_from(["application/json", "text/plain"]) | _ANY,
        "comexample": _ANY,
    },
)


@settings(max_examples=400, deadline=None)
@given(ev=_EVENTS)
def test_any_foreign_event_decodes_or_is_refused_and_what_decodes_travels(
    ev: dict[str, Any],
) -> None:
    """Only ``DecodeError`` escapes; a decoded foreign event encodes as an AOS envelope
    that decodes to the same message."""
    try:
        msg, options = decode_cloudevent(json.dumps(ev).encode(), recipient="bob")
    except DecodeError:
        return
    assert decode(encode(msg, options)) == (msg, options)


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_a_dead_lettered_foreign_event_is_listed_and_resubmitted_under_the_engines_id(
    engine: str, tmp_path: Path
) -> None:
    """The DLQ tools name a foreign event by the engine's id (as its handler saw it), not by
    its CloudEvents id, so resubmitting what they list finds the letter."""
    url = "memory://" if engine == "memory" else f"sqlite:///{tmp_path / 'q.db'}"
    config = MessageBusConfig(
        broker_url=url, data_dir=str(tmp_path), default_retry_policy={"max_attempts": 1}
    )
    seen: list[str] = []
    healthy = asyncio.Event()

    async def handler(m: Message) -> None:
        seen.append(m.message_id)
        if not healthy.is_set():
            raise RuntimeError("not yet")

    async with MessageBus(config) as bus:
        await bus.subscribe("bob", None, handler)
        await bus.broker.send([Envelope("bob", "eng-9", 2, body=event(id="evt-9", data={}))])
        for _ in range(500):
            letters = await bus.get_dead_letter_messages("bob")
            if letters:
                break
            await asyncio.sleep(0.01)
        assert [m.message_id for m in letters] == ["eng-9"]
        assert letters[0].content == {"type": BASE["type"], "data": {}}
        healthy.set()
        await bus.resubmit(letters[0])
        for _ in range(500):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.01)
        assert seen == ["eng-9", "eng-9"]
        assert await bus.get_dead_letter_messages("bob") == []
