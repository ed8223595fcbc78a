"""Security: signed senders, end-to-end encryption, access control (spec section 8)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.brokers.base import Envelope
from AgentOperatingSystem.messaging.brokers.memory import MemoryBroker
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.codec import security as security_module
from AgentOperatingSystem.messaging.codec.acl import NS_ACL
from AgentOperatingSystem.messaging.codec.envelope import (
    EncodeOptions,
    content_key_id,
    decode,
    encode,
)
from AgentOperatingSystem.messaging.codec.keyring import NS_PUBLIC_KEYS
from AgentOperatingSystem.messaging.codec.security import BusSecurity
from AgentOperatingSystem.messaging.codec.signing import (
    SIGNATURE_KEY,
    SIGNER_KEY,
    canonical_bytes,
    sign_message,
    signing_key_id,
    verify_message,
)
from AgentOperatingSystem.messaging.conversation_system import ConversationSystem
from AgentOperatingSystem.messaging.errors import (
    InvalidMessageError,
    PermissionDeniedError,
    SecurityError,
    UnknownKeyError,
)
from AgentOperatingSystem.messaging.types import Message, MessagePriority, MessageType
from AgentOperatingSystem.storage.manager import StorageManager
from tests.support.messages import task
from tests.support.waiting import eventually

# ----------------------------------------------------------------------------- helpers


def mem_config(tmp_path: Path, **kw: Any) -> MessageBusConfig:
    return MessageBusConfig(enable_persistence=False, data_dir=str(tmp_path), **kw)


def sqlite_config(tmp_path: Path, name: str = "bus", **kw: Any) -> MessageBusConfig:
    kw.setdefault("data_dir", str(tmp_path / f"{name}-data"))
    return MessageBusConfig(broker_url=f"sqlite:///{tmp_path}/messages.db", **kw)


def alice_to_bob(message_id: str, **content: Any) -> Message:
    """A TASK from alice to bob with ``content``."""
    return task("bob", sender="alice", message_id=message_id, content=content)


async def next_item(queue: asyncio.Queue[Message], timeout: float = 10.0) -> Message:
    return await asyncio.wait_for(queue.get(), timeout)


async def dlq_reasons(bus: MessageBus, agent: str) -> dict[str, str]:
    return {dl.message_id: dl.reason for dl in await bus.broker.dead_letters(agent, 10_000)}


@pytest.fixture
async def storage() -> AsyncIterator[StorageManager]:
    store = StorageManager("memory://")
    yield store
    await store.close()


# ----------------------------------------------------------------------------- spec 8.1


async def test_spec_8_1_end_to_end_encryption(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    message_bus = MessageBus(config)
    await message_bus.start()
    try:
        received: asyncio.Queue[Message] = asyncio.Queue()
        encryption_key = AESGCM.generate_key(bit_length=256)
        sensitive_message = Message(
            message_id="msg_secret",
            message_type=MessageType.TASK,
            sender_id="orchestrator",
            recipient_id="cfo_agent",
            content={"task": "payroll", "salaries": {"alice": 123456}},
            priority=MessagePriority.HIGH,
        )

        # End-to-end encryption
        await message_bus.publish(
            message=sensitive_message,
            encrypt=True,
            encryption_key=encryption_key,
        )

        # What the engine stores: ciphertext and a key id; routing fields stay readable.
        with sqlite3.connect(tmp_path / "messages.db") as db:
            (body,) = db.execute("SELECT body FROM messages WHERE id = 'msg_secret'").fetchone()
        event = json.loads(body)
        assert "data" not in event and "data_base64" in event
        assert event["aosencryption"] == "aes256gcm"
        assert event["aoskeyid"] == content_key_id(encryption_key)
        assert event["source"] == "orchestrator" and event["aosrecipient"] == "cfo_agent"
        assert event["type"] == "aos.task" and event["aospriority"] == 1
        assert b"payroll" not in body and b"123456" not in body
        assert base64.b64encode(encryption_key) not in body

        await message_bus.subscribe("cfo_agent", [MessageType.TASK], received.put)
        message = await next_item(received)
        assert message.content == {"task": "payroll", "salaries": {"alice": 123456}}
        assert message.message_id == "msg_secret"
    finally:
        await message_bus.stop()


@pytest.mark.parametrize("algorithm", ["gzip", "zstd"])
async def test_compress_then_encrypt_round_trip(tmp_path: Path, algorithm: str) -> None:
    async with MessageBus(mem_config(tmp_path)) as bus:
        key = os.urandom(32)
        content = {"text": "compressible " * 200}
        await bus.publish(
            message_type=MessageType.TASK,
            recipient_id="a",
            content=content,
            compress=True,
            compression_algorithm=algorithm,
            encrypt=True,
            encryption_key=key,
        )
        # What the engine stores: compressed before encrypted, so the ciphertext is small.
        [stored] = await bus.broker.receive("a", 1, 30.0)
        body = stored.body
        assert body is not None
        event = json.loads(body)
        assert "data" not in event and "data_base64" in event
        assert event["aoscompression"] == algorithm
        assert event["aosencryption"] == "aes256gcm"
        assert event["aoskeyid"] == content_key_id(key)
        assert b"compressible" not in body
        assert len(body) < len(json.dumps(content)) / 4
        assert await bus.broker.release("a", stored)

        [msg] = await bus.get_messages("a")
        assert msg.content == content
        await bus.acknowledge(msg.message_id)


async def test_encrypt_needs_a_32_byte_key(tmp_path: Path) -> None:
    async with MessageBus(mem_config(tmp_path)) as bus:
        with pytest.raises(InvalidMessageError):
            await bus.publish(
                message_type=MessageType.TASK,
                recipient_id="a",
                encrypt=True,
                encryption_key=b"short",
            )
        with pytest.raises(InvalidMessageError):
            await bus.publish(message_type=MessageType.TASK, recipient_id="a", encrypt=True)
        assert await bus.queue_depth("a") == 0


async def test_undecryptable_goes_to_dlq_then_shared_key_opens_it(tmp_path: Path) -> None:
    """Process A encrypts; process B (same engine and store, no key) dead-letters it with
    reason ``undecryptable``; once A stores the key in the key ring, B decrypts."""
    bus_a = MessageBus(sqlite_config(tmp_path, "a"))
    bus_b = MessageBus(sqlite_config(tmp_path, "b"))
    await bus_a.start()
    await bus_b.start()
    try:
        key = os.urandom(32)
        await bus_a.publish(
            message_id="m1",
            message_type=MessageType.TASK,
            recipient_id="worker",
            content={"secret": "s1"},
            encrypt=True,
            encryption_key=key,
        )
        got: asyncio.Queue[Message] = asyncio.Queue()
        await bus_b.subscribe("worker", ["task"], got.put)

        async def dead() -> bool:
            return await bus_b.dead_letter_depth("worker") == 1

        await eventually(dead)
        assert await dlq_reasons(bus_b, "worker") == {"m1": "undecryptable"}
        assert got.empty()

        key_id = await bus_a.store_encryption_key(key)
        assert key_id == content_key_id(key)
        assert bus_b.security is not None
        assert isinstance(bus_b.security, BusSecurity)
        await bus_b.security.reload()
        assert bus_b.security.content_key(key_id) == key
        await bus_b.resubmit("m1", agent_id="worker")
        msg = await next_item(got)
        assert msg.content == {"secret": "s1"}
    finally:
        await bus_b.stop()
        await bus_a.stop()


async def test_add_encryption_key_is_local_only(tmp_path: Path, storage: StorageManager) -> None:
    async with MessageBus(mem_config(tmp_path), storage=storage) as bus:
        key = os.urandom(32)
        key_id = bus.add_encryption_key(key)
        assert key_id == content_key_id(key)
        assert bus.security is not None and bus.security.content_key(key_id) == key
        assert await storage.list("aos.keyring.content") == []
        assert isinstance(bus.security, BusSecurity)
        assert await bus.security.forget_content_key(key_id)
        assert bus.security.content_key(key_id) is None
        with pytest.raises(InvalidMessageError):
            bus.add_encryption_key(b"x" * 31)


# ------------------------------------------------------------------- plaintext on disk


def _files_containing(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and needle in path.read_bytes():
            found.append(str(path.relative_to(root)))
    return found


async def test_encrypted_plaintext_never_reaches_sqlite_files(tmp_path: Path) -> None:
    secret = b"TOP-SECRET-" + os.urandom(8).hex().encode()
    control = b"PLAIN-CONTROL-" + os.urandom(8).hex().encode()
    config = sqlite_config(tmp_path, sign_messages=True)
    bus = MessageBus(config)
    await bus.start()
    try:
        key = os.urandom(32)
        for compress in (False, True):
            await bus.publish(
                message_type=MessageType.TASK,
                recipient_id="vault",
                content={"payload": secret.decode(), "n": int(compress)},
                compress=compress,
                encrypt=True,
                encryption_key=key,
            )
        await bus.publish(
            message_type=MessageType.TASK,
            recipient_id="other",
            content={"payload": control.decode()},
        )
        written = [p.split("/")[-1] for p in _files_containing(tmp_path, b"")]
        assert "messages.db-wal" in written and "messages.db" in written
        # The control proves the search finds plaintext where it is written...
        assert _files_containing(tmp_path, control)
        # ...and the secret is in none of the files, WAL included, before a checkpoint...
        assert _files_containing(tmp_path, secret) == []
        with sqlite3.connect(tmp_path / "messages.db") as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # ...and after it (the pages now live in the main file).
        assert _files_containing(tmp_path, secret) == []
        # Consuming decrypts (the publishing process knows the key) and still writes none.
        [a, b] = await bus.get_messages("vault", 10)
        assert {a.content["payload"], b.content["payload"]} == {secret.decode()}
        for m in (a, b):
            await bus.acknowledge(m.message_id)
        assert bus.verify_sender(a) and bus.verify_sender(b)
    finally:
        await bus.stop()
    assert _files_containing(tmp_path, secret) == []
    assert _files_containing(tmp_path, key) == []


# ----------------------------------------------------------------------------- spec 8.2


async def test_spec_8_2_verify_sender(tmp_path: Path) -> None:
    config = mem_config(tmp_path, sign_messages=True, require_signatures=True)
    async with MessageBus(config) as message_bus:
        await message_bus.register_agent_keys("orchestrator")
        await message_bus.publish(
            task(
                "cfo_agent",
                sender="orchestrator",
                content={"task": "close_books"},
                metadata={"correlation_id": "task_123"},
            )
        )
        [message] = await message_bus.get_messages("cfo_agent")

        # Verify message sender
        if not message_bus.verify_sender(message):
            raise SecurityError("Invalid message signature")

        assert isinstance(message.metadata[SIGNATURE_KEY], str)
        assert message.metadata[SIGNER_KEY] == signing_key_id(
            message_bus.security.public_keys("orchestrator")[message.metadata[SIGNER_KEY]]  # type: ignore[union-attr]
        )
        forged = message.copy(content={"task": "wire_money"})
        with pytest.raises(SecurityError, match="Invalid message signature"):
            if not message_bus.verify_sender(forged):
                raise SecurityError("Invalid message signature")
        unsigned = message.copy(metadata={})
        assert not message_bus.verify_sender(unsigned)
        assert not message_bus.verify_sender("not a message")  # type: ignore[arg-type]


async def test_require_signatures_dead_letters_unsigned_forged_and_tampered(
    tmp_path: Path, storage: StorageManager
) -> None:
    """A consumer with ``require_signatures`` hands a handler only verified messages."""
    engine = MemoryBroker()
    publisher = MessageBus(
        mem_config(tmp_path, sign_messages=False), storage=storage, broker=engine
    )
    config = mem_config(tmp_path, sign_messages=True, require_signatures=True)
    consumer = MessageBus(config, storage=storage, broker=engine)
    await publisher.start()
    await consumer.start()
    try:
        await consumer.register_agent_keys("alice")
        assert isinstance(consumer.security, BusSecurity)
        handled: asyncio.Queue[Message] = asyncio.Queue()
        broker = consumer.broker

        # 1. valid: published by the bus that hosts alice and signs
        await consumer.publish(alice_to_bob("good"))
        # 2. unsigned: published by a bus that does not sign
        await publisher.publish(alice_to_bob("unsigned"))
        # 3. forged: signed with a key that is not alice's
        forged = alice_to_bob("forged")
        sign_message(forged, Ed25519PrivateKey.generate())
        await publisher.publish(forged)
        # 4. forged with alice's key id but another key
        lying = alice_to_bob("lying")
        sign_message(
            lying, Ed25519PrivateKey.generate(), next(iter(consumer.security.public_keys("alice")))
        )
        await publisher.publish(lying)
        # 5. tampered in the engine: a valid envelope whose content was edited
        original = alice_to_bob("tampered", amount=10)
        await consumer.security.sign(original)
        event = json.loads(encode(original))
        event["data"]["amount"] = 10_000
        await broker.send([Envelope("bob", "tampered", 2, json.dumps(event).encode())])
        # 6. signed by alice but claiming to be from carol
        impostor = alice_to_bob("impostor")
        await consumer.security.sign(impostor)
        event = json.loads(encode(impostor))
        event["source"] = "carol"
        await broker.send([Envelope("bob", "impostor", 2, json.dumps(event).encode())])

        await consumer.subscribe("bob", ["task"], handled.put)
        msg = await next_item(handled)
        assert msg.message_id == "good" and consumer.verify_sender(msg)

        async def all_dead() -> bool:
            return await consumer.dead_letter_depth("bob") == 5

        await eventually(all_dead)
        assert await dlq_reasons(consumer, "bob") == {
            "unsigned": "signature",
            "forged": "signature",
            "lying": "signature",
            "tampered": "signature",
            "impostor": "signature",
        }
        assert handled.empty()
        dead = await consumer.get_dead_letter_messages("bob")
        assert {m.metadata["aos.dead_letter.reason"] for m in dead} == {"signature"}
    finally:
        await consumer.stop()
        await publisher.stop()
        await engine.close()


async def test_signed_messages_verify_across_processes(tmp_path: Path) -> None:
    """Two buses on one SQLite engine and store, each with its own data_dir (its own
    private keys): each verifies what the other signed; neither can sign as the other."""
    a = MessageBus(sqlite_config(tmp_path, "a", sign_messages=True, require_signatures=True))
    b = MessageBus(sqlite_config(tmp_path, "b", sign_messages=True, require_signatures=True))
    await a.start()
    await b.start()
    try:
        pub_a = await a.register_agent_keys("agent_a")
        await b.register_agent_keys("agent_b")
        assert isinstance(b.security, BusSecurity) and isinstance(a.security, BusSecurity)
        await b.security.reload()
        await a.security.reload()
        assert list(b.security.public_keys("agent_a").values()) == [pub_a]

        got_b: asyncio.Queue[Message] = asyncio.Queue()
        got_a: asyncio.Queue[Message] = asyncio.Queue()
        await b.subscribe("agent_b", ["task"], got_b.put)
        await a.subscribe("agent_a", ["task"], got_a.put)
        await a.publish(
            message_type=MessageType.TASK,
            sender_id="agent_a",
            recipient_id="agent_b",
            content={"hi": "b"},
        )
        await b.publish(
            message_type=MessageType.TASK,
            sender_id="agent_b",
            recipient_id="agent_a",
            content={"hi": "a"},
        )
        assert (await next_item(got_b)).content == {"hi": "b"}
        assert (await next_item(got_a)).content == {"hi": "a"}

        # b holds no private key for agent_a: it cannot sign (publish) as agent_a.
        with pytest.raises(UnknownKeyError, match="agent_a"):
            await b.publish(
                message_type=MessageType.TASK, sender_id="agent_a", recipient_id="agent_b"
            )
        assert await b.queue_depth("agent_b") == 0
    finally:
        await b.stop()
        await a.stop()


@asynccontextmanager
async def two_processes(
    tmp_path: Path, *, refresh_interval: float | None, **kw: Any
) -> AsyncIterator[tuple[BusSecurity, BusSecurity]]:
    """The security layers of two processes on one SQLite store, started in order: the
    first refreshes every ``refresh_interval`` seconds (None: never), the second never.
    Closed in reverse order, then the store."""
    store = StorageManager(f"sqlite:///{tmp_path}/store.db")
    first = BusSecurity(mem_config(tmp_path), store, refresh_interval=refresh_interval, **kw)
    second = BusSecurity(mem_config(tmp_path), store, refresh_interval=None, **kw)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()
        await store.close()


async def test_new_agent_of_another_process_is_learned_by_refresh(tmp_path: Path) -> None:
    async with two_processes(tmp_path, refresh_interval=0.02, key_dir=None) as (sec_b, sec_a):
        await sec_a.register_agent_keys("late")
        msg = Message(message_type=MessageType.EVENT, sender_id="late")
        await sec_a.sign(msg)
        assert sec_a.verify(msg)

        async def learned() -> bool:
            return sec_b.verify(msg)

        await eventually(learned)  # by the refresh loop / the reload on an unknown key id
        assert await sec_b.verify_async(msg)


async def test_verify_async_fetches_an_unknown_sender(tmp_path: Path) -> None:
    async with two_processes(tmp_path, refresh_interval=None, key_dir=None) as (sec_b, sec_a):
        await sec_a.register_agent_keys("late")
        msg = Message(message_type=MessageType.EVENT, sender_id="late")
        await sec_a.sign(msg)
        assert await sec_b.verify_async(msg)
        msg.content["x"] = 1
        assert not await sec_b.verify_async(msg)


async def test_private_key_file_persists_and_is_private(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path, sign_messages=True)
    async with MessageBus(config) as bus:
        public = await bus.register_agent_keys("cfo_agent")
        assert await bus.register_agent_keys("cfo_agent") == public  # idempotent
        await bus.publish(
            message_id="m1", message_type=MessageType.TASK, sender_id="cfo_agent", recipient_id="x"
        )
    key_dir = Path(config.data_dir) / "keys"
    [key_file] = list(key_dir.iterdir())
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key_file.read_bytes()
    # The private key is nowhere in the store: only the public key is.
    assert "messages-store.db" in _files_containing(tmp_path, b"")
    raw_private = key_file.read_bytes()
    assert _files_containing(tmp_path, raw_private.splitlines()[1]) == [
        str(key_file.relative_to(tmp_path))
    ]

    # After a restart the same key signs without registering again.
    async with MessageBus(config) as bus:
        await bus.publish(
            message_id="m2", message_type=MessageType.TASK, sender_id="cfo_agent", recipient_id="x"
        )
        assert await bus.register_agent_keys("cfo_agent") == public
        msgs = await bus.get_messages("x", 10)
        assert [m.message_id for m in msgs] == ["m1", "m2"]
        assert all(bus.verify_sender(m) for m in msgs)
        kids = {m.metadata[SIGNER_KEY] for m in msgs}
        assert kids == {signing_key_id(public)}


async def test_unregistered_sender_cannot_sign_but_default_sender_can(tmp_path: Path) -> None:
    async with MessageBus(mem_config(tmp_path, sign_messages=True)) as bus:
        with pytest.raises(UnknownKeyError, match="register_agent_keys"):
            await bus.publish(message_type=MessageType.TASK, sender_id="stranger", recipient_id="x")
        assert await bus.queue_depth("x") == 0
        # The bus's own identity (default_sender_id) is registered on first use.
        await bus.publish(message_type=MessageType.TASK, recipient_id="x")
        [msg] = await bus.get_messages("x")
        assert msg.sender_id == "aos" and bus.verify_sender(msg)


async def test_auto_register_option(tmp_path: Path, storage: StorageManager) -> None:
    config = mem_config(tmp_path, sign_messages=True)
    security = BusSecurity(config, storage, auto_register=True)
    async with MessageBus(config, security=security) as bus:
        await bus.publish(message_type=MessageType.TASK, sender_id="anyone", recipient_id="x")
        [msg] = await bus.get_messages("x")
        assert bus.verify_sender(msg)
    await security.close()


async def test_rotation_and_revocation(tmp_path: Path, storage: StorageManager) -> None:
    security = BusSecurity(mem_config(tmp_path, sign_messages=True), storage)
    await security.start()
    try:
        first = await security.register_agent_keys("ceo")
        old = Message(message_type=MessageType.TASK, sender_id="ceo", recipient_id="x")
        await security.sign(old)
        second = await security.register_agent_keys("ceo", rotate=True)
        assert second != first
        new = Message(message_type=MessageType.TASK, sender_id="ceo", recipient_id="x")
        await security.sign(new)
        assert new.metadata[SIGNER_KEY] == signing_key_id(second)
        assert security.verify(old) and security.verify(new)  # old key still listed

        assert await security.revoke_agent_key("ceo", signing_key_id(first))
        assert not security.verify(old) and security.verify(new)
        assert await security.revoke_agent_key("ceo", signing_key_id(second))
        assert not security.verify(new)
        with pytest.raises(UnknownKeyError):
            await security.sign(Message(message_type=MessageType.TASK, sender_id="ceo"))
        # Registering again makes a fresh key; revoked keys are never listed again.
        third = await security.register_agent_keys("ceo")
        assert third not in (first, second)
        assert set(security.public_keys("ceo")) == {signing_key_id(third)}
        record = await storage.get(NS_PUBLIC_KEYS, "ceo")
        assert record is not None
        assert set(record["revoked"]) == {signing_key_id(first), signing_key_id(second)}
    finally:
        await security.close()


async def test_verify_rejects_malformed_signature_values(
    tmp_path: Path, storage: StorageManager
) -> None:
    security = BusSecurity(mem_config(tmp_path), storage)
    await security.start()
    try:
        await security.register_agent_keys("a")
        msg = Message(message_type=MessageType.TASK, sender_id="a")
        await security.sign(msg)
        assert security.verify(msg)
        sig, kid = msg.metadata[SIGNATURE_KEY], msg.metadata[SIGNER_KEY]
        for bad_sig in (None, 1, "", "!" * 88, sig[:-4] + "AAA=", [sig], sig + "=="):
            assert not security.verify(msg.copy(metadata={SIGNATURE_KEY: bad_sig, SIGNER_KEY: kid}))
        for bad_kid in (None, 7, "", kid[:-1] + "0" if kid[-1] != "0" else kid[:-1] + "1"):
            assert not security.verify(msg.copy(metadata={SIGNATURE_KEY: sig, SIGNER_KEY: bad_kid}))
        assert security.verify(msg.copy())
    finally:
        await security.close()


# ---------------------------------------------------------------- tamper property test

_TEXT = st.text(min_size=1, max_size=20)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
_TIMESTAMPS = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    ),
)
_MESSAGES = st.builds(
    Message,
    message_id=_TEXT,
    message_type=st.sampled_from(list(MessageType)),
    sender_id=st.just("signer"),
    recipient_id=st.none() | _TEXT,
    content=st.dictionaries(st.text(max_size=8), _JSON, max_size=5),
    timestamp=_TIMESTAMPS,
    priority=st.sampled_from(list(MessagePriority)),
    metadata=st.dictionaries(
        st.text(max_size=8).filter(lambda k: not k.startswith("aos.sig")), _JSON, max_size=3
    ),
    correlation_id=st.none() | _TEXT,
    reply_to=st.none() | _TEXT,
    ttl=st.none() | st.integers(1, 10**6),
)
_FIELDS = [f.name for f in dataclasses.fields(Message)] + ["signature", "signer_key"]
_SIGNER = Ed25519PrivateKey.generate()
_SIGNER_ID = signing_key_id(_SIGNER.public_key())
_OTHER = Ed25519PrivateKey.generate()
_OTHER_ID = signing_key_id(_OTHER.public_key())
_KEYS = {_SIGNER_ID: _SIGNER.public_key(), _OTHER_ID: _OTHER.public_key()}


def _tampered(msg: Message, field: str, data: st.DataObject) -> Message:
    """A copy of ``msg`` with exactly one field changed to a different value."""
    out = msg.copy()
    if field == "message_id":
        out.message_id = data.draw(_TEXT.filter(lambda v: v != msg.message_id))
    elif field == "message_type":
        out.message_type = data.draw(
            st.sampled_from([t for t in MessageType if t != msg.message_type])
        )
    elif field == "sender_id":
        out.sender_id = data.draw(_TEXT.filter(lambda v: v != msg.sender_id))
    elif field == "recipient_id":
        out.recipient_id = data.draw((st.none() | _TEXT).filter(lambda v: v != msg.recipient_id))
    elif field == "content":
        key = data.draw(st.text(max_size=8))
        value = data.draw(_JSON)
        if key in out.content and out.content[key] == value:
            out.content[key] = [value]
        else:
            out.content[key] = value
    elif field == "timestamp":
        delta = data.draw(st.integers(1, 10**9)) * data.draw(st.sampled_from([1, -1]))
        out.timestamp = msg.timestamp + timedelta(microseconds=delta)
    elif field == "priority":
        out.priority = data.draw(st.sampled_from([p for p in MessagePriority if p != msg.priority]))
    elif field == "metadata":
        action = data.draw(
            st.sampled_from(
                ["add", "drop"]
                if any(not k.startswith("aos.sig") for k in msg.metadata)
                else ["add"]
            )
        )
        if action == "drop":
            key = data.draw(
                st.sampled_from(
                    sorted(k for k in msg.metadata if k not in (SIGNATURE_KEY, SIGNER_KEY))
                )
            )
            del out.metadata[key]
        else:
            key = data.draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in msg.metadata))
            out.metadata[key] = data.draw(_JSON)
    elif field == "correlation_id":
        out.correlation_id = data.draw(
            (st.none() | _TEXT).filter(lambda v: v != msg.correlation_id)
        )
    elif field == "reply_to":
        out.reply_to = data.draw((st.none() | _TEXT).filter(lambda v: v != msg.reply_to))
    elif field == "ttl":
        out.ttl = data.draw((st.none() | st.integers(1, 10**6)).filter(lambda v: v != msg.ttl))
    elif field == "signature":
        raw = bytearray(base64.b64decode(msg.metadata[SIGNATURE_KEY]))
        index = data.draw(st.integers(0, 63))
        raw[index] ^= data.draw(st.integers(1, 255))
        out.metadata[SIGNATURE_KEY] = base64.b64encode(bytes(raw)).decode()
    elif field == "signer_key":
        out.metadata[SIGNER_KEY] = _OTHER_ID
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=_MESSAGES, field=st.sampled_from(_FIELDS), data=st.data())
def test_tampering_any_single_field_breaks_the_signature(
    msg: Message, field: str, data: st.DataObject
) -> None:
    sign_message(msg, _SIGNER, _SIGNER_ID)
    assert verify_message(msg, _KEYS)
    # The signature survives the envelope round trip (any time zone, any content)...
    decoded, _ = decode(encode(msg))
    assert verify_message(decoded, _KEYS)
    # ...and the same holds for an encrypted envelope (it signs the plaintext).
    key = b"k" * 32
    opened, _ = decode(
        encode(msg, seal=EncodeOptions("gzip", key)), keys={content_key_id(key): key}.get
    )
    assert verify_message(opened, _KEYS)
    # Any single change breaks it, directly and after its own round trip.
    bad = _tampered(msg, field, data)
    assert bad != msg or field in ("signature", "signer_key")
    assert not verify_message(bad, _KEYS)
    assert not verify_message(decode(encode(bad))[0], _KEYS)


def test_canonical_bytes_cover_every_field() -> None:
    msg = Message(
        message_id="m",
        message_type=MessageType.TASK,
        sender_id="s",
        recipient_id="r",
        content={"b": 1, "a": [1.5, "x"]},
        metadata={"k": "v", SIGNATURE_KEY: "zz"},
        correlation_id="c",
        reply_to="q",
        ttl=30,
        timestamp=datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
    )
    data = json.loads(canonical_bytes(msg, "kid"))
    assert data == [
        "aos-sig-v1",
        "kid",
        "m",
        "task",
        "s",
        "r",
        {"a": [1.5, "x"], "b": 1},
        1735725600000000,
        2,
        {"k": "v"},
        "c",
        "q",
        30,
    ]
    # The same instant in another zone has the same canonical form.
    utc = msg.copy(timestamp=msg.timestamp.astimezone(UTC))
    assert canonical_bytes(utc, "kid") == canonical_bytes(msg, "kid")
    # Content with mixed key types (as the envelope sends them: as strings) still signs.
    odd = msg.copy(content={1: "a", "b": 2})
    sign_message(odd, _SIGNER, _SIGNER_ID)
    assert verify_message(decode(encode(odd))[0], _KEYS)
    with pytest.raises(InvalidMessageError):
        sign_message(msg.copy(content={"x": float("nan")}), _SIGNER)


# ----------------------------------------------------------------------------- spec 8.3


async def test_spec_8_3_access_control(tmp_path: Path) -> None:
    message_bus = MessageBus(mem_config(tmp_path))
    await message_bus.start()
    try:
        # Agent-based access control
        await message_bus.set_permissions(
            agent_id="ceo_agent",
            can_publish=["task", "command"],
            can_subscribe=["query", "event"],
        )

        async def handler(message: Message) -> None:
            return None

        # publish
        await message_bus.publish(
            message_type=MessageType.TASK, sender_id="ceo_agent", recipient_id="cfo"
        )
        with pytest.raises(PermissionDeniedError, match="ceo_agent"):
            await message_bus.publish(
                message_type=MessageType.QUERY, sender_id="ceo_agent", recipient_id="cfo"
            )
        with pytest.raises(PermissionDeniedError):
            await message_bus.publish(
                message_type=MessageType.EVENT, sender_id="ceo_agent", content={"event": "x"}
            )
        # publish_batch: all or nothing
        with pytest.raises(PermissionDeniedError):
            await message_bus.publish_batch(
                [
                    Message(
                        message_type=MessageType.TASK, sender_id="ceo_agent", recipient_id="b1"
                    ),
                    Message(
                        message_type=MessageType.STATUS, sender_id="ceo_agent", recipient_id="b1"
                    ),
                ]
            )
        assert await message_bus.queue_depth("b1") == 0
        # send_command (allowed) and request (a QUERY: refused)
        await message_bus.send_command("cfo", "report", sender_id="ceo_agent")
        with pytest.raises(PermissionDeniedError):
            await message_bus.request(
                sender_id="ceo_agent", recipient_id="cfo", content={"q": 1}, timeout=1
            )
        # subscribe
        await message_bus.subscribe("ceo_agent", ["query", "event"], handler)
        with pytest.raises(PermissionDeniedError):
            await message_bus.subscribe("ceo_agent", ["task"], handler)
        with pytest.raises(PermissionDeniedError):
            await message_bus.subscribe("ceo_agent", None, handler)  # every type
        # get_messages: a TASK in ceo's queue may not be received by ceo
        await message_bus.publish(
            message_type=MessageType.TASK, sender_id="orchestrator", recipient_id="ceo_inbox"
        )
        await message_bus.set_permissions("ceo_inbox", can_publish=None, can_subscribe=["query"])
        with pytest.raises(PermissionDeniedError):
            await message_bus.get_messages("ceo_inbox")
        assert await message_bus.queue_depth("ceo_inbox") == 1  # released, not lost
        # conversations publish through the bus and are checked too
        store = StorageManager("memory://")
        conversations = ConversationSystem(store, message_bus)
        conversation_id = await conversations.start_conversation(
            participants=["ceo_agent", "cfo_agent"], topic="q2"
        )
        with pytest.raises(PermissionDeniedError):
            await conversations.add_message(
                conversation_id=conversation_id,
                sender_id="ceo_agent",
                content="?",
                message_type=MessageType.QUERY,
            )
        await conversations.add_message(
            conversation_id=conversation_id,
            sender_id="ceo_agent",
            content="do it",
            message_type=MessageType.TASK,
        )
        await store.close()
        # other agents are governed by default_permission ("allow")
        await message_bus.publish(
            message_type=MessageType.QUERY, sender_id="cfo", recipient_id="ceo_agent"
        )
        assert isinstance(message_bus.security, BusSecurity)
        assert message_bus.security.get_permissions("ceo_agent") == {
            "can_publish": ["command", "task"],
            "can_subscribe": ["event", "query"],
        }
        with pytest.raises(InvalidMessageError):
            await message_bus.set_permissions("x", can_publish=["nonsense"])
        with pytest.raises(InvalidMessageError):
            await message_bus.set_permissions("x", can_publish="task")  # type: ignore[arg-type]
    finally:
        await message_bus.stop()


async def test_permissions_persist_across_restart(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    async with MessageBus(config) as bus:
        await bus.set_permissions("ceo_agent", can_publish=["task"], can_subscribe=["query"])
    async with MessageBus(config) as bus:
        with pytest.raises(PermissionDeniedError):
            await bus.publish(
                message_type=MessageType.QUERY, sender_id="ceo_agent", recipient_id="x"
            )
        await bus.publish(message_type=MessageType.TASK, sender_id="ceo_agent", recipient_id="x")
        assert isinstance(bus.security, BusSecurity)
        assert await bus.security.remove_permissions("ceo_agent")
        await bus.publish(message_type=MessageType.QUERY, sender_id="ceo_agent", recipient_id="x")
    async with MessageBus(config) as bus:
        await bus.publish(message_type=MessageType.QUERY, sender_id="ceo_agent", recipient_id="x")
    store = StorageManager(config.resolved_storage_url())
    assert await store.list(NS_ACL) == []
    await store.close()


async def test_permissions_set_in_one_process_reach_another(tmp_path: Path) -> None:
    async with two_processes(tmp_path, refresh_interval=0.02) as (a, b):
        a.authorize_publish("x", MessageType.QUERY)
        await b.set_permissions("x", can_publish=["task"], can_subscribe=None)

        async def applied() -> bool:
            try:
                a.authorize_publish("x", MessageType.QUERY)
            except PermissionDeniedError:
                return True
            return False

        await eventually(applied)
        a.authorize_subscribe("x", MessageType.QUERY)  # None = every type


async def test_default_permission_deny(tmp_path: Path) -> None:
    config = mem_config(tmp_path, default_permission="deny")
    async with MessageBus(config) as bus:
        with pytest.raises(PermissionDeniedError):
            await bus.publish(message_type=MessageType.TASK, sender_id="nobody", recipient_id="x")
        with pytest.raises(PermissionDeniedError):
            await bus.subscribe("nobody", ["task"], lambda m: None)
        await bus.set_permissions("boss", can_publish=None, can_subscribe=None)
        await bus.set_permissions("worker", can_publish=[], can_subscribe=["task"])
        await bus.publish(message_type=MessageType.TASK, sender_id="boss", recipient_id="worker")
        got: asyncio.Queue[Message] = asyncio.Queue()
        await bus.subscribe("worker", ["task"], got.put)
        assert (await next_item(got)).sender_id == "boss"
        with pytest.raises(PermissionDeniedError):
            await bus.publish(
                message_type=MessageType.STATUS, sender_id="worker", recipient_id="boss"
            )


async def test_an_agent_may_answer_the_requests_it_handles(tmp_path: Path) -> None:
    """ceo may not publish RESPONSE messages, but answering a query its handler received is
    part of being allowed to receive it."""
    async with MessageBus(mem_config(tmp_path)) as bus:
        await bus.set_permissions("ceo_agent", can_publish=["task"], can_subscribe=["query"])

        async def answer(message: Message) -> dict[str, Any]:
            return {"answer": 42}

        await bus.subscribe("ceo_agent", ["query"], answer)
        response = await bus.request(
            sender_id="cfo", recipient_id="ceo_agent", content={"q": "?"}, timeout=5
        )
        assert response.content == {"answer": 42}
        with pytest.raises(PermissionDeniedError):
            await bus.publish(
                message_type=MessageType.RESPONSE, sender_id="ceo_agent", recipient_id="cfo"
            )


async def test_security_owns_its_store_when_none_is_given(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    bus = MessageBus(config)
    await bus.start()
    security = bus.security
    assert isinstance(security, BusSecurity)
    assert security.storage.url == config.resolved_storage_url()
    assert security.key_dir == Path(config.data_dir) / "keys"
    await bus.stop()
    assert not security.storage.is_open
    # A given store is not closed by the bus.
    store = StorageManager("memory://")
    async with MessageBus(mem_config(tmp_path), storage=store) as bus2:
        assert isinstance(bus2.security, BusSecurity)
        assert bus2.security.key_dir is None  # memory store: private keys in memory only
        await bus2.set_permissions("a", ["task"], ["task"])
    assert await store.get(NS_ACL, "a") is not None
    await store.close()


def test_the_security_module_still_names_what_it_always_did() -> None:
    """``codec.security`` re-exports the names of the modules it was split into."""
    from AgentOperatingSystem.messaging.codec import acl, keyring, signing

    home = {"NS_ACL": acl, "NS_PUBLIC_KEYS": keyring, "NS_CONTENT_KEYS": keyring}
    for name in ("SIGNATURE_KEY", "SIGNER_KEY", "canonical_bytes", "sign_message"):
        home[name] = signing
    for name, module in home.items():
        assert getattr(security_module, name) is getattr(module, name), name
    assert security_module.signing_key_id is signing_key_id
    assert security_module.verify_message is verify_message
    reexported = {*home, "signing_key_id", "verify_message"}
    assert set(security_module.__all__) == {"BusSecurity", *reexported}
