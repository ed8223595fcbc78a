"""The codec's JSON: the fast libraries (orjson out, msgspec in) answer exactly as the
strict standard-library path would, and everything the strict path refuses (NaN,
infinities, overflowing numbers, deep nesting, lone surrogates) is still refused."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from AgentOperatingSystem.messaging.codec import strictjson
from AgentOperatingSystem.messaging.codec.envelope import decode, encode
from AgentOperatingSystem.messaging.errors import InvalidMessageError
from AgentOperatingSystem.messaging.types import Message, MessageType


@pytest.fixture
def stdlib_only() -> Iterator[None]:
    """The strict standard-library path alone (as without orjson and msgspec)."""
    saved = strictjson.FAST_DUMPS, strictjson.FAST_LOADS
    strictjson.FAST_DUMPS = strictjson.FAST_LOADS = None
    try:
        yield
    finally:
        strictjson.FAST_DUMPS, strictjson.FAST_LOADS = saved


def strict(data: str | bytes) -> Any:
    """What the standard-library path gives (or the exception type it raises)."""
    saved = strictjson.FAST_LOADS
    strictjson.FAST_LOADS = None
    try:
        return strictjson.loads(data)
    except (ValueError, RecursionError) as exc:
        return type(exc)
    finally:
        strictjson.FAST_LOADS = saved


def fast(data: str | bytes) -> Any:
    try:
        return strictjson.loads(data)
    except (ValueError, RecursionError) as exc:
        return type(exc)


def test_the_fast_libraries_are_in_use() -> None:
    assert strictjson.FAST_DUMPS is not None and strictjson.FAST_LOADS is not None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(value=st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=4))
def test_writing_matches_the_strict_path(value: dict[str, Any]) -> None:
    """The same refusals, and output that reads back to the same value."""
    try:
        out = strictjson.dumps_utf8(value)
    except InvalidMessageError:
        out = None
    saved = strictjson.FAST_DUMPS
    strictjson.FAST_DUMPS = None
    try:
        reference = strictjson.dumps_utf8(value)
    except InvalidMessageError:
        reference = None
    finally:
        strictjson.FAST_DUMPS = saved
    assert (out is None) == (reference is None)
    if out is not None and reference is not None:
        assert json.loads(out.decode("utf-8", "surrogatepass")) == json.loads(
            reference.decode("utf-8", "surrogatepass")
        )


TOKENS = st.sampled_from(
    ['{"a":', "1", "-0", "1e999", "-1e999", "1e-999", "NaN", "Infinity", '"\\ud800"', '"é"',
     "9" * 30, "[", "]", "{", "}", ",", '"k":', "null", "true", " ", "\x00", '"\\u0000"',
     "0.1", "01", ".5", '"\\', "\ud800"]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(parts=st.lists(TOKENS, max_size=12), as_bytes=st.booleans())
def test_reading_matches_the_strict_path(parts: list[str], as_bytes: bool) -> None:
    """For JSON-ish text built from awkward tokens: the same value or the same refusal."""
    text = "{" + "".join(parts)
    data: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    assert fast(data) == strict(data)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":NaN}',
        b'{"a":-Infinity}',
        b'{"a":1e999}',
        b'{"a":' + b"9" * 5000 + b"}",
        b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"a":"x\x00"}',
        b'{"a":1} x',
    ],
)
def test_what_strict_json_refuses_is_refused(body: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)):
        strictjson.loads(body)


def test_what_only_the_strict_path_reads_is_still_read() -> None:
    assert strictjson.loads(b'{"s":"\\ud800x"}') == {"s": "\ud800x"}
    assert strictjson.loads(b'{"s":"\xed\xa0\x80"}') == {"s": "\ud800"}  # as before: surrogatepass
    assert strictjson.loads('{"k": 1}'.encode("utf-16")) == {"k": 1}
    assert strictjson.loads(b"\xef\xbb\xbf" + b'{"k": 1}') == {"k": 1}
    assert strictjson.loads(b'{"n":' + b"9" * 40 + b"}") == {"n": int("9" * 40)}
    deep = "[" * 500 + "]" * 500
    assert strictjson.loads('{"d":' + deep + "}") == {"d": json.loads(deep)}


@pytest.mark.parametrize(
    "content",
    [
        {"x": float("nan")},
        {"x": [1, float("inf")]},
        {"x": object()},
        {"x": {1, 2}},
        {"x": b"bytes"},
    ],
)
def test_what_is_not_json_is_refused_at_encode(content: dict[str, Any]) -> None:
    with pytest.raises(InvalidMessageError, match="not JSON-serialisable"):
        encode(Message(message_type=MessageType.TASK, content=content))


def test_the_fast_writer_hands_the_odd_cases_to_the_strict_one() -> None:
    class Flavour(str, enum.Enum):
        SWEET = "sweet"

    content = {
        "surrogate": "\udfff",
        "big": 2**70,
        "keys": {1: "int key", None: "null key"},
        "subclass": Flavour.SWEET,
        "deep": json.loads("[" * 300 + "]" * 300),
        "none": None,
    }
    msg = Message(message_type=MessageType.TASK, content=content)
    back = decode(encode(msg))[0].content
    assert back["surrogate"] == "\udfff" and back["big"] == 2**70
    assert back["keys"] == {"1": "int key", "null": "null key"}
    assert back["subclass"] == "sweet" and back["none"] is None
    # the documented difference: orjson writes enum members and UUIDs
    u = uuid.UUID(int=5)
    plain = decode(encode(Message(message_type=MessageType.TASK, content={"u": u})))[0]
    assert plain.content == {"u": str(u)}


def test_envelopes_round_trip_without_the_fast_libraries(stdlib_only: None) -> None:
    msg = Message(message_type=MessageType.TASK, content={"s": "é", "n": None, "f": 0.1})
    body = encode(msg)
    assert decode(body)[0] == msg
    with pytest.raises(InvalidMessageError):
        encode(Message(message_type=MessageType.TASK, content={"x": float("nan")}))


def test_fast_output_held_costs_its_length_not_the_encoders_buffer() -> None:
    """What the codec keeps (an envelope in a batch, a queue) is as big as its bytes: the fast
    encoder's 4 KiB write buffer is not carried along (it doubled a SQLite bus's RSS with a
    million messages queued)."""
    import tracemalloc

    value = {"type": "aos.task", "data": {"n": 1, "text": "x" * 100}}
    assert strictjson.FAST_DUMPS is not None  # orjson is a dependency
    size = len(strictjson.dumps_utf8(value))
    tracemalloc.start()
    try:
        kept = [strictjson.dumps_utf8(value) for _ in range(1000)]
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == 1000 and all(len(k) == size for k in kept)
    assert held / 1000 < size + 200, (held / 1000, size)
