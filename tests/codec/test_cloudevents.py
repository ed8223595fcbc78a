"""Exact CloudEvents: every kind of envelope the encoder writes passes the official
CloudEvents 1.0 JSON schema (``cloudevents-1.0.2.schema.json``, from the specification's
repository, tag v1.0.2, ``cloudevents/formats/cloudevents.json``) with its formats checked,
the CloudEvents type system for extension attributes, and the CloudEvents SDK; envelopes
written before (``fixtures/envelopes_v1.json``) still decode."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cloudevents.core.formats.json import JSONFormat
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from AgentOperatingSystem.messaging.codec.envelope import (
    EncodeOptions,
    content_key_id,
    decode,
    decode_cloudevent,
    encode,
)
from AgentOperatingSystem.messaging.codec.signing import sign_message, verify_message
from AgentOperatingSystem.messaging.errors import DecodeError, InvalidMessageError
from AgentOperatingSystem.messaging.policy import DeliveryOptions, RetryPolicy
from AgentOperatingSystem.messaging.types import (
    DeliveryMode,
    Message,
    MessagePriority,
    MessageType,
)

HERE = Path(__file__).parent
SCHEMA = json.loads((HERE / "cloudevents-1.0.2.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(
    SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
)
FIXTURES = json.loads((HERE / "fixtures" / "envelopes_v1.json").read_text())
KEY = hashlib.sha256(b"aos-test-content-key").digest()
KEYS = {content_key_id(KEY): KEY}
SIGNER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"aos-test-signer").digest())
TS = datetime(2026, 12, 8, 1, 2, 3, 456789, tzinfo=UTC)
CORE = {"specversion", "id", "source", "type", "time", "datacontenttype", "dataschema", "subject"}
MEDIA_TYPE = re.compile(r"^[a-z]+/[a-z0-9.+-]+$")
#: CloudEvents' String type excludes C0/C1 controls, surrogates and noncharacters.
NOT_STRING = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")


def _msg(i: int, **fields: Any) -> Message:
    base: dict[str, Any] = {
        "message_id": f"kind-{i}",
        "message_type": MessageType.TASK,
        "sender_id": "agent-a",
        "recipient_id": "agent-b",
        "content": {"task": "x", "n": i, "f": 0.25, "s": "héllo ✓", "l": [1, None, True]},
        "timestamp": TS,
    }
    base.update(fields)
    return Message(**base)


def _signed(m: Message) -> Message:
    sign_message(m, SIGNER)
    return m


def kinds() -> list[tuple[str, Message, DeliveryOptions, EncodeOptions | None]]:
    """Every kind of envelope: each message type and priority, awkward ids and content,
    each TTL form, each seal, signatures, each delivery option."""
    plain = DeliveryOptions()
    out: list[tuple[str, Message, DeliveryOptions, EncodeOptions | None]] = []
    for i, t in enumerate(MessageType):
        out.append((f"type-{t.value}", _msg(i, message_type=t), plain, None))
    for i, p in enumerate(MessagePriority, 20):
        out.append((f"priority-{p.value}", _msg(i, priority=p), plain, None))
    odd_sender = "CFO agent ü/#1?:%x"
    out += [
        ("non-ascii-sender", _msg(30, sender_id="CFO agent ü", recipient_id="Ärger #1"), plain, None),
        ("reserved-chars-sender", _msg(31, sender_id=odd_sender), plain, None),
        ("uri-sender", _msg(32, sender_id="https://example.org/agents/1"), plain, None),
        ("ttl-int", _msg(33, ttl=60), plain, None),
        ("ttl-float", _msg(34, ttl=0.5), plain, None),
        ("ttl-whole-float", _msg(35, ttl=30.0), plain, None),
        ("ttl-past-int32", _msg(36, ttl=2**40), plain, None),
        ("ttl-tiny", _msg(37, ttl=5e-324), plain, None),
        ("ttl-huge-float", _msg(38, ttl=1e308), plain, None),
        ("metadata", _msg(39, metadata={"trace": "t1", "nested": {"a": [1]}}), plain, None),
        ("correlation-reply", _msg(40, correlation_id="c-1", reply_to="replies"), plain, None),
        ("no-recipient", _msg(41, message_type=MessageType.EVENT, recipient_id=None), plain, None),
        ("lone-surrogate-content", _msg(42, content={"s": "\ud800x", "c": "\x00\u2028"}), plain, None),
        ("binary-content", _msg(43, content={"b": bytes(range(256)).decode("latin-1")}), plain, None),
        ("empty-content", _msg(44, content={}), plain, None),
        ("null-in-content", _msg(45, content={"x": None, "y": [None]}), plain, None),
        ("big-int-content", _msg(46, content={"n": 2**80, "m": -(2**70)}), plain, None),
        ("minute-offset", _msg(47, timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30)))), plain, None),
        ("second-offset", _msg(48, timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(seconds=3725)))), plain, None),
        ("gzip", _msg(50), plain, EncodeOptions("gzip")),
        ("zstd", _msg(51), plain, EncodeOptions("zstd")),
        ("sealed", _msg(52), plain, EncodeOptions(None, KEY)),
        ("gzip-sealed", _msg(53), plain, EncodeOptions("gzip", KEY)),
        ("zstd-sealed", _msg(54), plain, EncodeOptions("zstd", KEY)),
        ("signed", _signed(_msg(55, ttl=0.25)), plain, None),
        ("signed-zstd-sealed", _signed(_msg(56, ttl=5)), plain, EncodeOptions("zstd", KEY)),
        ("exactly-once", _msg(57), DeliveryOptions(delivery_mode=DeliveryMode.EXACTLY_ONCE, idempotency_key="idem-1"), None),
        ("at-most-once", _msg(58), DeliveryOptions(delivery_mode=DeliveryMode.AT_MOST_ONCE), None),
        ("retry-hops-causation", _msg(59), DeliveryOptions(retry_policy=RetryPolicy(max_attempts=3), hops=3, causation_id="c1"), None),
        ("extras", _msg(60), DeliveryOptions(extras={"tenant": "t1"}), None),
        ("everything", _signed(_msg(61, ttl=2.5, metadata={"k": "v"}, correlation_id="c", reply_to="r")), DeliveryOptions(delivery_mode=DeliveryMode.EXACTLY_ONCE, idempotency_key="i", retry_policy=RetryPolicy(max_attempts=2), hops=1, causation_id="c0", extras={"e": 1}), EncodeOptions("gzip", KEY)),
    ]  # fmt: skip
    return out


KINDS = kinds()


def type_system_errors(event: dict[str, Any]) -> list[str]:
    """What in ``event`` breaks the CloudEvents type system beyond the JSON schema: extension
    names (lower-case letters and digits, at most 20), extension values (String, Integer in
    32 bits, Boolean), String attributes free of forbidden characters, media types."""
    errors: list[str] = []
    for name, value in event.items():
        if name in ("data", "data_base64"):
            continue
        if name not in CORE:
            if not re.fullmatch(r"[a-z0-9]{1,20}", name):
                errors.append(f"extension name {name!r}")
            if isinstance(value, bool):
                continue
            if isinstance(value, int):
                if not -(2**31) <= value < 2**31:
                    errors.append(f"{name} is not a 32-bit Integer: {value}")
                continue
            if not isinstance(value, str):
                errors.append(f"{name} is a {type(value).__name__}, not a CloudEvents type")
                continue
        if isinstance(value, str) and NOT_STRING.search(value):
            errors.append(f"{name} holds characters a CloudEvents String cannot")
    ctype = event.get("datacontenttype")
    if ctype is not None and not MEDIA_TYPE.match(ctype):
        errors.append(f"datacontenttype {ctype!r} is not a media type")
    return errors


def test_the_schema_checks_formats() -> None:
    """Not vacuous: the validator checks the schema's formats (URI-reference, RFC 3339)."""
    good = {"specversion": "1.0", "id": "1", "source": "a", "type": "t"}
    assert VALIDATOR.is_valid(good)
    assert not VALIDATOR.is_valid({**good, "source": "CFO agent ü"})
    assert not VALIDATOR.is_valid({**good, "time": "2026-01-01T00:00:00"})
    assert not VALIDATOR.is_valid({**good, "id": ""})


@pytest.mark.parametrize(("name", "message", "options", "seal"), KINDS, ids=[k[0] for k in KINDS])
def test_every_kind_of_envelope_is_an_exact_cloudevent(
    name: str, message: Message, options: DeliveryOptions, seal: EncodeOptions | None
) -> None:
    body = encode(message, options, seal)
    event = json.loads(body)
    errors = sorted(e.message for e in VALIDATOR.iter_errors(event))
    assert errors == []
    assert type_system_errors(event) == []
    assert event["aossender"] == message.sender_id
    if "data_base64" in event:
        assert event["aoscontenttype"] == "application/json"
        expected = {
            ("gzip", False): "application/gzip",
            ("zstd", False): "application/zstd",
        }.get((event.get("aoscompression"), "aosencryption" in event), "application/octet-stream")
        assert event["datacontenttype"] == expected
        assert "data" not in event
    else:
        assert event["datacontenttype"] == "application/json"
    # and it comes back as it went
    back, back_options = decode(body, keys=KEYS.get)
    assert back == message and back_options == options
    assert type(back.ttl) is type(message.ttl)
    if "aos.signature" in message.metadata:
        assert verify_message(back, {message.metadata["aos.signer_key"]: SIGNER.public_key()})


@pytest.mark.parametrize(("name", "message", "options", "seal"), KINDS, ids=[k[0] for k in KINDS])
def test_the_cloudevents_sdk_reads_every_kind(
    name: str, message: Message, options: DeliveryOptions, seal: EncodeOptions | None
) -> None:
    body = encode(message, options, seal)
    event = JSONFormat().read(None, body)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == message.message_id
    assert event.get_type() == f"aos.{message.message_type.value}"
    assert event.get_extension("aossender") == message.sender_id
    assert event.get_time() == message.timestamp
    data = event.get_data()
    if seal is None:
        assert data == json.loads(body)["data"]
    else:
        assert isinstance(data, bytes)  # what data_base64 holds, as the SDK gives it
    # what the SDK writes back is still our envelope
    again = JSONFormat().write(event)
    assert decode(again, keys=KEYS.get) == (message, options)


def test_ttl_forms() -> None:
    def attrs(ttl: float) -> dict[str, Any]:
        event = json.loads(encode(_msg(1, ttl=ttl)))
        return {k: v for k, v in event.items() if k.startswith("aosttl")}

    assert attrs(60) == {"aosttl": 60}
    assert attrs(0.5) == {"aosttlduration": "PT0.5S"}
    assert attrs(30.0) == {"aosttlduration": "PT30.0S"}
    assert attrs(2**31) == {"aosttlduration": "PT2147483648S"}
    assert attrs(1e-7) == {"aosttlduration": "PT0.0000001S"}
    with pytest.raises(InvalidMessageError):
        encode(_msg(1, ttl=float("inf")))
    base = json.loads(encode(_msg(1)))
    for bad in (
        "P1D",
        "PT-1S",
        "PT1.S",
        "PT.5S",
        "PT0S",
        "PT0.0S",
        "pt1s",
        5,
        "PT" + "9" * 5000 + "S",
    ):
        with pytest.raises(DecodeError):
            decode(json.dumps({**base, "aosttlduration": bad}).encode())
    with pytest.raises(DecodeError, match="not both"):
        decode(json.dumps({**base, "aosttl": 5, "aosttlduration": "PT5S"}).encode())


def test_source_is_the_percent_encoded_sender() -> None:
    def source(sender: str) -> str:
        return str(json.loads(encode(_msg(1, sender_id=sender)))["source"])

    assert source("cfo_agent") == "cfo_agent"
    assert source("CFO agent ü") == "CFO%20agent%20%C3%BC"
    assert source("a:b/c?d#e%f") == "a%3Ab%2Fc%3Fd%23e%25f"


def test_an_edited_source_names_another_sender() -> None:
    """``source`` decides when it disagrees with ``aossender``: editing it changes the
    sender (whose signature then fails), it cannot be ignored."""
    m = _signed(_msg(1))
    event = json.loads(encode(m))
    event["source"] = "carol%20c"
    back, _ = decode(json.dumps(event).encode())
    assert back.sender_id == "carol c"
    assert not verify_message(back, {m.metadata["aos.signer_key"]: SIGNER.public_key()})
    event["source"] = "%FF"
    with pytest.raises(DecodeError, match="percent-encoded"):
        decode(json.dumps(event).encode())


def test_unsupported_inner_content_type_is_refused() -> None:
    event = json.loads(encode(_msg(1), seal=EncodeOptions("gzip")))
    event["aoscontenttype"] = "text/xml"
    with pytest.raises(DecodeError, match="aoscontenttype"):
        decode(json.dumps(event).encode())


# ----------------------------------------------------------------------------- old envelopes


def _expected(case: dict[str, Any]) -> tuple[Message, DeliveryOptions]:
    m = dict(case["message"])
    m["message_type"] = MessageType(m["message_type"])
    m["priority"] = MessagePriority(m["priority"])
    m["timestamp"] = datetime.fromisoformat(m["timestamp"])
    o = dict(case["options"])
    o["delivery_mode"] = DeliveryMode(o["delivery_mode"])
    o["retry_policy"] = RetryPolicy.parse(o["retry_policy"])
    return Message(**m), DeliveryOptions(**o)


FIXTURE_IDS = [c["name"] for c in FIXTURES["envelopes"]]


@pytest.mark.parametrize("case", FIXTURES["envelopes"], ids=FIXTURE_IDS)
def test_envelopes_written_before_still_decode(case: dict[str, Any]) -> None:
    key = base64.b64decode(FIXTURES["content_key_b64"])
    keys = {FIXTURES["content_key_id"]: key}
    body = case["body"].encode("utf-8")
    expected = _expected(case)
    assert decode(body, keys=keys.get) == expected
    assert decode_cloudevent(body, keys=keys.get) == expected
    msg = expected[0]
    if "aos.signature" in msg.metadata:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(FIXTURES["signer_public_b64"]))
        assert verify_message(decode(body, keys=keys.get)[0], {FIXTURES["signer_key_id"]: public})
    # and written again, it is exact
    again = encode(*expected)
    assert type_system_errors(json.loads(again)) == []
    assert VALIDATOR.is_valid(json.loads(again))


def test_the_old_envelopes_were_not_exact() -> None:
    """What the fixture records is what this issue fixed (so the checks above can fail)."""
    by_name = {c["name"]: json.loads(c["body"]) for c in FIXTURES["envelopes"]}
    assert not VALIDATOR.is_valid(by_name["non-ascii-sender"])  # source is not a URI-reference
    assert type_system_errors(by_name["ttl-float"]) == ["aosttl is a float, not a CloudEvents type"]
    assert by_name["gzip"]["datacontenttype"] == "application/json"  # over gzip bytes
