"""Hostile input: random and mutated envelopes fed to the decoder and to running consumers.

Every input must either decode into a message that encodes again (and decodes to the same
thing), or fail with ``DecodeError``/``DecryptionError``; a consumer must dead-letter each
hostile one with the reason the bus's own checks give, keep running, and still deliver the
well-formed messages published between them.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import itertools
import json
import random
import tempfile
import tracemalloc
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.brokers.base import Envelope
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.codec.envelope import (
    EncodeOptions,
    content_key_id,
    decode,
    decode_cloudevent,
    encode,
)
from AgentOperatingSystem.messaging.codec.security import (
    NS_PUBLIC_KEYS,
    BusSecurity,
    sign_message,
    signing_key_id,
)
from AgentOperatingSystem.messaging.errors import (
    DecodeError,
    DecryptionError,
    InvalidMessageError,
    UnknownMessageError,
)
from AgentOperatingSystem.messaging.policy import DeliveryOptions, RetryPolicy
from AgentOperatingSystem.messaging.types import (
    DeliveryMode,
    Message,
    MessagePriority,
    MessageType,
)
from AgentOperatingSystem.storage.manager import StorageManager

LIMIT = 256 * 1024  # max_message_bytes for these tests
QUEUE = "fuzz_q"
SENDER = "fuzz_sender"
_PRIVATE = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"aos-fuzz-signer").digest())
_KID = signing_key_id(_PRIVATE.public_key())
CONTENT_KEY = hashlib.sha256(b"aos-fuzz-content-key").digest()
OTHER_KEY = hashlib.sha256(b"aos-fuzz-other-key").digest()
_KEYS = {content_key_id(CONTENT_KEY): CONTENT_KEY}

# ----------------------------------------------------------------------------- corpus


def _signed(options: DeliveryOptions | None = None, **fields: Any) -> Message:
    base: dict[str, Any] = {
        "message_id": "corpus",
        "message_type": MessageType.TASK,
        "sender_id": SENDER,
        "recipient_id": QUEUE,
        "content": {"task": "fuzz", "n": 1, "f": 0.5, "s": "héllo ✓", "l": [1, None, True]},
        "timestamp": datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC),
    }
    base.update(fields)
    msg = Message(**base)
    sign_message(msg, _PRIVATE, _KID)
    return msg


def _build_corpus() -> list[bytes]:
    out: list[bytes] = []
    opts = [
        None,
        DeliveryOptions(delivery_mode=DeliveryMode.EXACTLY_ONCE, idempotency_key="idem-1"),
        DeliveryOptions(delivery_mode=DeliveryMode.AT_MOST_ONCE),
        DeliveryOptions(retry_policy=RetryPolicy(max_attempts=3), hops=3, causation_id="c1"),
        DeliveryOptions(extras={"tenant": "t1"}),
    ]
    seals = [
        None,
        EncodeOptions("gzip"),
        EncodeOptions("zstd"),
        EncodeOptions(None, CONTENT_KEY),
        EncodeOptions("gzip", CONTENT_KEY),
        EncodeOptions("zstd", CONTENT_KEY),
        EncodeOptions(None, OTHER_KEY),  # no consumer has this key
    ]
    i = 0
    for option in opts:
        for seal in seals:
            i += 1
            msg = _signed(
                message_id=f"corpus-{i}",
                message_type=list(MessageType)[i % len(MessageType)],
                priority=list(MessagePriority)[i % 5],
                metadata={"trace": f"t{i}", "nested": {"a": [i]}},
                correlation_id=f"corr-{i}" if i % 2 else None,
                reply_to="fuzz_replies" if i % 3 == 0 else None,
                ttl=60 if i % 4 == 0 else None,
            )
            out.append(encode(msg, option or DeliveryOptions(), seal))
    unsigned = _signed(message_id="unsigned-base")
    unsigned.metadata.clear()
    out.append(encode(unsigned))
    return out


CORPUS = _build_corpus()
_GOOD_EVENT = json.loads(CORPUS[0])

# ----------------------------------------------------------------------------- bombs


def _zstd_stream_bomb(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes whose header does not declare its size."""
    cobj = zstandard.ZstdCompressor(level=1).compressobj()
    chunk = b"\0" * (1 << 20)
    parts = [cobj.compress(chunk) for _ in range(size >> 20)]
    parts.append(cobj.flush())
    return b"".join(parts)


_ZSTD_BOMB = _zstd_stream_bomb(64 << 20)
_ZSTD_SIZED_BOMB = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * (4 << 20))
_GZIP_BOMB = gzip.compress(b" " * (8 << 20), compresslevel=9)
_DEEP = "[" * 50_000 + "]" * 50_000


_NASTY_IDS = itertools.count()


def _event(**changes: Any) -> bytes:
    event = dict(_GOOD_EVENT)
    event["id"] = f"nasty-{next(_NASTY_IDS)}"  # each its own message, as an engine files it
    for key, value in changes.items():
        if value is _DROP:
            event.pop(key, None)
        else:
            event[key] = value
    return json.dumps(event).encode()


_DROP = object()


def _sealed_raw(raw: bytes, compression: str | None, key: bytes | None) -> dict[str, Any]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    fields: dict[str, Any] = {"data": _DROP}
    if compression:
        fields["aoscompression"] = compression
    if key is not None:
        nonce = b"\x01" * 12
        raw = AESGCM(key).encrypt(nonce, raw, b"aos-content-v1")
        fields.update(
            aosencryption="aes256gcm",
            aoskeyid=content_key_id(key),
            aosnonce=base64.b64encode(nonce).decode(),
        )
    fields["data_base64"] = base64.b64encode(raw).decode()
    return fields


NASTY_DECODABLE = [2, 22, 23, 24, 31, 32]  # BOM, NUL in id, surrogates in content, ...
NASTY: list[bytes] = [
    b"",
    b"\xff\xfe\x00garbage",
    b"\xef\xbb\xbf" + CORPUS[0],
    b"[" * 100_000,
    b"{" * 10,
    _DEEP.encode(),
    b"x" * (LIMIT + 1),
    b'{"specversion": "1.0"}',
    b"null",
    b"[1,2,3]",
    b'"text"',
    b"1e999",
    _event(aospriority=float("nan")),
    _event(aospriority=int("9" * 4000)),
    _event(aosttl=float("inf")),
    _event(aosttl=float("nan")),
    CORPUS[0].replace(b'"aospriority":', b'"aospriority":1e999,"x":'),
    _event(time="0001-01-01T00:00:00+01:00"),
    _event(time="9999-12-31T23:59:59.999999-23:59"),
    _event(time="2025-01-01T00:00:00"),
    _event(time="x" * 10_000),
    _event(id="\ud800"),
    _event(id="a\x00b"),
    _event(data={"s": "\ud800\udfff\udc00"}),
    _event(data={"deep": json.loads("[" * 500 + "]" * 500)}),
    _event(aosmetadata=_DEEP),
    _event(aosmetadata='{"a": NaN}'),
    _event(aosextras=_DEEP),
    _event(aosretrypolicy=_DEEP),
    _event(aosretrypolicy='{"max_attempts": 0}'),
    _event(aosretrypolicy='{"max_attempts": 1e999}'),
    _event(aoshops=10**30),
    _event(aoshops=33),
    _event(**_sealed_raw(_ZSTD_BOMB, "zstd", None)),
    _event(**_sealed_raw(_ZSTD_SIZED_BOMB, "zstd", None)),
    _event(**_sealed_raw(_GZIP_BOMB, "gzip", None)),
    _event(**_sealed_raw(_ZSTD_BOMB, "zstd", CONTENT_KEY)),
    _event(**_sealed_raw(_GZIP_BOMB, "gzip", CONTENT_KEY)),
    _event(**_sealed_raw(gzip.compress(_DEEP.encode()), "gzip", None)),
    _event(**_sealed_raw(gzip.compress(b'{"a": 1}')[:-6], "gzip", None)),
    _event(**_sealed_raw(gzip.compress(b'{"a": 1}') + b"junk", "gzip", None)),
    _event(**_sealed_raw(zlib.compress(b'{"a": 1}'), "gzip", None)),
    _event(**_sealed_raw(b'{"a": Infinity}', None, CONTENT_KEY)),
    _event(**_sealed_raw(b'{"a": 1}', None, OTHER_KEY)),
    _event(**_sealed_raw(b"", None, CONTENT_KEY)),
    _event(**_sealed_raw(b'{"a": 1}', "lz4", None)),
    _event(data_base64="@@@", data=_DROP),
    _event(data_base64=base64.b64encode(b"{}").decode(), aosencryption="rot13", data=_DROP),
    _event(
        data_base64=base64.b64encode(b"x" * 40).decode(),
        aosencryption="aes256gcm",
        aoskeyid=content_key_id(CONTENT_KEY),
        aosnonce=base64.b64encode(b"n" * 11).decode(),
        data=_DROP,
    ),
]

# ----------------------------------------------------------------------------- mutators

KNOWN_KEYS = [
    "specversion", "id", "source", "type", "time", "datacontenttype", "data", "data_base64",
    "aospriority", "aosrecipient", "aoscorrelationid", "aosreplyto", "aosttl", "aosmetadata",
    "aoscompression", "aosencryption", "aoskeyid", "aosnonce", "aosdeliverymode",
    "aosidempotencykey", "aosretrypolicy", "aoshops", "aoscausationid", "aosextras",
]  # fmt: skip

PLAUSIBLE: dict[str, list[Any]] = {
    "type": [f"aos.{t.value}" for t in MessageType] + ["aos.", "task", "aos.TASK"],
    "aospriority": [0, 1, 4, 5, -1, 2.0, True, "2"],
    "aosdeliverymode": ["at_most_once", "exactly_once", "at_least_once", "never"],
    "aosretrypolicy": ['{"max_attempts": 2}', '{"max_attempts": 0}', '{"nope": 1}', "[]"],
    "aoshops": [0, 1, 32, 33, -1, 10**20],
    "aoscompression": ["gzip", "zstd", "lz4"],
    "aosencryption": ["aes256gcm", "none"],
    "aoskeyid": [content_key_id(CONTENT_KEY), content_key_id(OTHER_KEY), "0" * 32],
    "aosnonce": [base64.b64encode(b"\0" * 12).decode(), "AAAA", "!!"],
    "time": ["2025-06-01T12:00:00+00:00", "2025-06-01T12:00:00", "0001-01-01T00:00:00+01:00"],
    "aosttl": [0, -1, 1e308, 5, "5", True],
    "aosmetadata": ['{"aos.signature": 1}', "[]", "{", '{"k": "v"}'],
    "aosextras": ['{"a": 1}', "[]", "x"],
    "specversion": ["1.0", "0.3", 1.0],
}


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**64, -(2**70), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.5, 1e300, -2.5e-300, rng.random()])
    if kind == 4:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]))
                       for _ in range(rng.randrange(12)))  # fmt: skip
    if kind == 5:
        return rng.choice(["", "aos.task", "1.0", QUEUE + "x", "\x00", "{}", "null", "é" * 3])
    if kind == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {
            f"k{rng.randrange(5)}": _random_json(rng, depth + 1) for _ in range(rng.randrange(4))
        }
    return rng.choice(NASTY_VALUES)


NASTY_VALUES: list[Any] = [
    "\ud800", "x" * 600, 10**40, -0.0, float("inf"), float("nan"), [[[[[]]]]], {"": {}}, "\u2028",
]  # fmt: skip


def _m_random_bytes(rng: random.Random, base: bytes) -> bytes:
    return rng.randbytes(rng.randrange(0, 400))


def _m_random_json(rng: random.Random, base: bytes) -> bytes:
    return json.dumps(_random_json(rng)).encode()


def _m_flip(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(rng.randrange(1, 9)):
        i = rng.randrange(len(data))
        data[i] ^= rng.randrange(1, 256)
    return bytes(data)


def _m_truncate(rng: random.Random, base: bytes) -> bytes:
    return base[: rng.randrange(len(base))]


def _m_insert(rng: random.Random, base: bytes) -> bytes:
    i = rng.randrange(len(base) + 1)
    piece = rng.choice([rng.randbytes(rng.randrange(1, 20)), b'"', b"{", b"]", b",", b"\\u", b"0"])
    return base[:i] + piece + base[i:]


def _m_splice(rng: random.Random, base: bytes) -> bytes:
    other = rng.choice(CORPUS)
    return base[: rng.randrange(len(base))] + other[rng.randrange(len(other)) :]


def _m_replace_field(rng: random.Random, base: bytes) -> bytes:
    event = json.loads(base)
    for _ in range(rng.randrange(1, 4)):
        key = rng.choice(KNOWN_KEYS + list(event))
        if key in PLAUSIBLE and rng.random() < 0.7:
            event[key] = rng.choice(PLAUSIBLE[key])
        else:
            event[key] = _random_json(rng)
    return json.dumps(event, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def _m_drop_field(rng: random.Random, base: bytes) -> bytes:
    event = json.loads(base)
    for _ in range(rng.randrange(1, 3)):
        event.pop(rng.choice(list(event)), None)
    return json.dumps(event).encode()


def _m_tamper_content(rng: random.Random, base: bytes) -> bytes:
    """A well-formed envelope whose signed content was edited: only the signature tells."""
    event = json.loads(base)
    if isinstance(event.get("data"), dict):
        event["data"][rng.choice(["task", "n", "new"])] = _random_json(rng)
    else:
        event["aosrecipient"] = "someone-else"
    return json.dumps(event).encode()


def _m_nasty(rng: random.Random, base: bytes) -> bytes:
    return rng.choice(NASTY)


def _m_unchanged(rng: random.Random, base: bytes) -> bytes:
    return base


MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    _m_random_bytes,
    _m_random_json,
    _m_flip,
    _m_flip,
    _m_truncate,
    _m_insert,
    _m_splice,
    _m_replace_field,
    _m_replace_field,
    _m_replace_field,
    _m_drop_field,
    _m_tamper_content,
    _m_nasty,
    _m_nasty,
    _m_unchanged,
]

RECIPES = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, len(MUTATORS) - 1))


def expand(recipe: tuple[int, int]) -> bytes:
    seed, kind = recipe
    rng = random.Random(seed)
    return MUTATORS[kind](rng, rng.choice(CORPUS))


# ----------------------------------------------------------------------------- decoder


def check_decoder(body: bytes) -> bool:
    """Decode ``body``; True when it decoded. Whatever decodes must encode again and decode
    to the same message and options."""
    try:
        msg, options = decode(body, max_bytes=LIMIT, keys=_KEYS.get)
    except (DecodeError, DecryptionError):
        return False
    again = encode(msg, options)
    msg2, options2 = decode(again, max_bytes=8 * LIMIT, keys=_KEYS.get)
    assert msg2 == msg
    assert options2 == options
    return True


def test_corpus_decodes() -> None:
    """The base envelopes are valid (except the one sealed with a key nobody has)."""
    results = [check_decoder(b) for b in CORPUS]
    assert results.count(False) == 5  # the OTHER_KEY ones
    decodable = [i for i, body in enumerate(NASTY) if check_decoder(body)]
    assert decodable == NASTY_DECODABLE


@settings(
    max_examples=110,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(recipes=st.lists(RECIPES, min_size=100, max_size=100))
def test_decoder_survives_random_and_mutated_envelopes(recipes: list[tuple[int, int]]) -> None:
    """11,000 mutated envelopes: nothing but DecodeError/DecryptionError escapes."""
    for recipe in recipes:
        check_decoder(expand(recipe))


_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def _field(key: str) -> st.SearchStrategy[Any]:
    options = PLAUSIBLE.get(key, [])
    good = _GOOD_EVENT.get(key)
    pool = st.sampled_from(options) if options else st.nothing()
    return pool | (st.just(good) if good is not None else st.nothing()) | _VALUE


_ENVELOPES = st.fixed_dictionaries(
    {k: _field(k) for k in ("specversion", "id", "source", "type", "time")},
    optional={
        k: _field(k) for k in KNOWN_KEYS if k not in ("specversion", "id", "source", "type", "time")
    },
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=_ENVELOPES, ascii_only=st.booleans())
def test_decoder_on_generated_envelopes(event: dict[str, Any], ascii_only: bool) -> None:
    """Structured envelopes built field by field from plausible and junk values."""
    body = json.dumps(event, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    check_decoder(body)


@settings(max_examples=500, deadline=None)
@given(body=st.binary(max_size=300))
def test_decoder_on_random_bytes(body: bytes) -> None:
    assert check_decoder(body) is False


def test_decompression_bombs_are_bounded() -> None:
    """A 64 MiB zstd frame that does not declare its size is refused without ever holding
    more than about ``max_message_bytes`` of output."""
    body = _event(**_sealed_raw(_ZSTD_BOMB, "zstd", None))
    assert len(body) < LIMIT
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="exceeds"):
            decode(body, max_bytes=LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * LIMIT
    for bomb, algorithm in ((_GZIP_BOMB, "gzip"), (_ZSTD_SIZED_BOMB, "zstd")):
        with pytest.raises(DecodeError, match="exceeds"):
            decode(_event(**_sealed_raw(bomb, algorithm, None)), max_bytes=LIMIT)


def test_decoded_lone_surrogates_encode_again() -> None:
    msg, options = decode(_event(data={"s": "\ud800x"}), max_bytes=LIMIT)
    assert msg.content == {"s": "\ud800x"}
    assert decode(encode(msg, options))[0] == msg
    # and a publisher may send one too
    out = Message(message_type=MessageType.TASK, content={"s": "\udfff"})
    assert decode(encode(out, seal=EncodeOptions("zstd")))[0] == out


def test_non_finite_numbers_are_refused() -> None:
    for body in (
        _event(aosttl=float("inf")),
        _event(data={"x": float("nan")}),
        CORPUS[0].replace(b'"n":1', b'"n":1e999'),
    ):
        with pytest.raises(DecodeError):
            decode(body, max_bytes=LIMIT)


def test_content_that_is_not_json_is_refused_at_encode_and_the_encoder_recovers() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    for content in ({"x": float("nan")}, {"x": float("-inf")}, {"x": object()}, cyclic):
        with pytest.raises(InvalidMessageError, match="not JSON-serialisable"):
            encode(Message(message_type=MessageType.TASK, content=content))
    # the encoder is made once and reused: a failure part-way leaves nothing behind
    nested = {"a": [{"b": 1}], "c": {"d": [1.5, "é", None, True]}}
    out = Message(message_type=MessageType.TASK, content=nested)
    assert decode(encode(out))[0].content == nested


def test_envelopes_in_utf16_or_with_a_bom_still_decode() -> None:
    out = Message(message_type=MessageType.TASK, content={"text": "héllo"})
    text = encode(out).decode("utf-8")
    for body in (
        b"\xef\xbb\xbf" + text.encode("utf-8"),
        text.encode("utf-16-le"),
        text.encode("utf-16-be"),
        text.encode("utf-32"),
    ):
        assert decode(body, max_bytes=LIMIT)[0] == out


# ----------------------------------------------------------------------------- consumers


def _public_record() -> dict[str, Any]:
    raw = _PRIVATE.public_key().public_bytes_raw()
    return {"agent_id": SENDER, "keys": {_KID: {"public_key": base64.b64encode(raw).decode()}}}


class Oracle:
    """What the bus's checks must do with each body, in delivery order."""

    def __init__(self, security: BusSecurity, hop_limit: int) -> None:
        self.security = security
        self.hop_limit = hop_limit
        self.processed: set[str] = set()

    def outcome(self, body: bytes, engine_id: str) -> str:
        try:
            # as admission reads it: a foreign CloudEvent takes the engine's id and the queue
            msg, options = decode_cloudevent(
                body,
                message_id=engine_id,
                recipient=QUEUE,
                max_bytes=LIMIT,
                keys=self.security.content_key,
            )
        except DecryptionError:
            return "undecryptable"
        except DecodeError:
            return "undecodable"
        if msg.message_id != engine_id:  # the envelope claims another message's id
            return "undecodable"
        if options.hops > self.hop_limit:
            return "hop_limit"
        if not self.security.verify(msg):
            return "signature"
        if options.delivery_mode is DeliveryMode.EXACTLY_ONCE:
            key = f"{QUEUE}\x1f{options.idempotency_key or msg.message_id}"
            if key in self.processed:
                return "dropped"
            self.processed.add(key)
        return "delivered"


async def _run_consumer(
    bodies: list[bytes], broker_url: str, data_dir: str, pull: bool
) -> dict[str, str]:
    storage = StorageManager("memory://")
    await storage.put(NS_PUBLIC_KEYS, SENDER, _public_record())
    config = MessageBusConfig(
        broker_url=broker_url,
        data_dir=data_dir,
        sign_messages=True,
        require_signatures=True,
        max_message_bytes=LIMIT,
    )
    bus = MessageBus(config, storage=storage)
    await bus.start()
    try:
        bus.add_encryption_key(CONTENT_KEY)
        security = bus.security
        assert isinstance(security, BusSecurity)
        oracle = Oracle(security, config.hop_limit)
        handled: list[Message] = []
        good_ids: list[str] = []

        def handler(message: Message) -> None:
            handled.append(message)

        sub = None if pull else await bus.subscribe(QUEUE, None, handler)
        expected: dict[str, str] = {}
        chunk = 50
        if pull:
            # The pull side settles by the message id in the body, and records exactly-once
            # keys at the ack (two copies locked in one batch would both be handed out):
            # keep both unique, as publish-side deduplication would.
            seen: set[str] = set()
            unique = []
            for body in bodies:
                try:
                    msg, options = decode(body, max_bytes=LIMIT, keys=_KEYS.get)
                    keys = {msg.message_id, f"idem:{options.idempotency_key or msg.message_id}"}
                except (DecodeError, DecryptionError):
                    keys = set()
                if not keys & seen:
                    unique.append(body)
                    seen |= keys
            bodies = unique
        used: set[str] = set()
        for start in range(0, len(bodies), chunk):
            envelopes = []
            for i, body in enumerate(bodies[start : start + chunk], start):
                # An engine files a message under the id its envelope carries (as publish
                # does); a body claiming an id already taken gets another one, which the bus
                # must then refuse as undecodable (its envelope names another message).
                fuzz_id = f"fz-{i}"
                try:
                    claimed = decode(body, max_bytes=LIMIT, keys=_KEYS.get)[0].message_id
                    if claimed not in used:
                        fuzz_id = claimed
                except (DecodeError, DecryptionError):
                    pass
                used.add(fuzz_id)
                expected[fuzz_id] = oracle.outcome(body, fuzz_id)
                envelopes.append(Envelope(QUEUE, fuzz_id, 2, body=body))
            await bus.broker.send(envelopes)
            good = await bus.publish(
                message_type=MessageType.TASK,
                recipient_id=QUEUE,
                content={"good": start},
            )
            good_ids.append(good.message_id)

        async with asyncio.timeout(60):
            while await bus.queue_depth(QUEUE) > 0:
                if pull:
                    for msg in await bus.get_messages(QUEUE, 50):
                        handled.append(msg)
                        try:
                            await bus.acknowledge(msg.message_id, QUEUE)
                        except UnknownMessageError:
                            pass  # at_most_once: settled when it was handed out
                else:
                    assert sub is not None and sub.task is not None and not sub.task.done()
                    await asyncio.sleep(0.002)

        if sub is not None:
            assert sub.task is not None and not sub.task.done(), "the consumer died"
        dead = {dl.message_id: dl.reason for dl in await bus.broker.dead_letters(QUEUE, 100_000)}
        expected_dead = {k: v for k, v in expected.items() if v not in ("delivered", "dropped")}
        assert dead == expected_dead
        handled_ids = [m.message_id for m in handled]
        for good_id in good_ids:
            assert handled_ids.count(good_id) == 1
        delivered = list(expected.values()).count("delivered")
        assert len(handled) == delivered + len(good_ids)
        assert all(security.verify(m) for m in handled)
        return expected
    finally:
        await bus.stop()
        await storage.close()


# The consumer tests' settings (each example is a whole bus run over hundreds of envelopes):
# no deadline, no shrink phase, no too_slow/data_too_large health checks.
CONSUMER_RUNS = settings(
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(CONSUMER_RUNS, max_examples=20)
@given(recipes=st.lists(RECIPES, min_size=500, max_size=500))
def test_running_consumer_survives_hostile_envelopes(recipes: list[tuple[int, int]]) -> None:
    """10,000 random and mutated envelopes injected through the broker seam into a memory
    engine while a subscription consumes: each ends where the bus's checks say (the DLQ with
    its reason, or the handler when it is a valid signed message), the consumer keeps
    running, and the well-formed messages between them are all delivered."""
    bodies = [expand(r) for r in recipes]
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_run_consumer(bodies, "memory://", tmp, pull=False))


@settings(CONSUMER_RUNS, max_examples=2)
@given(recipes=st.lists(RECIPES, min_size=400, max_size=400))
def test_sqlite_consumer_and_pull_side_survive(recipes: list[tuple[int, int]]) -> None:
    """The same on the SQLite engine, through a subscription and through get_messages."""
    bodies = [expand(r) for r in recipes]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/fuzz.db?synchronous=normal"
        asyncio.run(_run_consumer(bodies, url, tmp, pull=False))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/fuzz.db?synchronous=normal"
        asyncio.run(_run_consumer(bodies[:200], url, tmp, pull=True))


def test_consumer_outcomes_cover_every_reason() -> None:
    """The known hostile inputs, the corpus and tampered copies, through a consumer: the
    oracle is not vacuous, each reason the bus gives for hostile input occurs."""
    rng = random.Random(7)
    bodies = CORPUS + NASTY + [_m_tamper_content(rng, b) for b in CORPUS[:10]]
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = asyncio.run(_run_consumer(bodies, "memory://", tmp, pull=False))
    assert set(outcomes.values()) == {
        "delivered",
        "dropped",
        "undecodable",
        "undecryptable",
        "signature",
        "hop_limit",
    }
    by_body = dict(zip(bodies, outcomes.values(), strict=True))
    assert by_body[NASTY[0]] == "undecodable"
    assert by_body[CORPUS[0]] == "delivered"
