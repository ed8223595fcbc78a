"""Security for the bus: signed senders, the key ring, content keys and access control.

:class:`BusSecurity` is the bus's :class:`~.hooks.SecurityHooks`. ``MessageBus.start()``
creates it as ``BusSecurity(config, storage)``; ``storage`` is the bus's ``storage=``
argument, or, when that is ``None``, a :class:`~AgentOperatingSystem.storage.manager.StorageManager`
on ``config.resolved_storage_url()`` that this object opens and closes itself.

Signed senders
    Every agent has Ed25519 key pairs. The **public** keys live in the key ring, a namespace
    of the StorageManager shared by every process that uses the same store
    (``aos.keyring.public``: one record per agent listing its key ids and public keys, plus
    the ids of revoked keys). The **private** key stays where the agent runs: a PKCS#8 PEM
    file ``<config.data_dir>/keys/<agent>.<hash>.ed25519.pem`` with mode ``0600`` in a
    ``0700`` directory, or, when the store itself is ``memory://`` (nothing outlives the
    process), in this process's memory only. It is never written to the store.

    A process hosting an agent calls ``await bus.register_agent_keys(agent_id)`` once (the
    key then persists in its key file; calling again returns the same public key). The bus's
    own identity, ``config.default_sender_id``, is registered automatically on its first
    signature; ``BusSecurity(..., auto_register=True)`` extends that trust-on-first-use to
    every sender without a key, which is convenient in a single process and unsafe when
    untrusted code shares the store.

    With ``sign_messages=True`` the bus signs each message at publish over a canonical
    encoding (:func:`canonical_bytes`) of all its fields: id, type, sender, recipient,
    content, timestamp, priority, metadata without the two signature keys, correlation id,
    reply-to and ttl. The signature and the key id travel in ``metadata["aos.signature"]``
    and ``metadata["aos.signer_key"]``. :meth:`BusSecurity.verify` checks the signature
    against the keys the key ring lists for ``sender_id`` and returns False for a missing,
    malformed, forged or tampered one, or one made with a revoked key. With
    ``require_signatures=True`` a consumer dead-letters such a message (reason ``signature``).

Content keys
    ``publish(encrypt=True, encryption_key=key)`` seals the content with AES-256-GCM; the
    envelope carries the key id (a hash of the key), never the key. A process decrypts with
    the keys it knows: those it published with, those added with ``bus.add_encryption_key``
    (this process only), and those stored with ``await bus.store_encryption_key(key)``
    (namespace ``aos.keyring.content`` of the store, so every process sharing the store can
    decrypt). A stored content key is as secret as the store: whoever can read the store can
    decrypt. Distribute keys out of band and use ``add_encryption_key`` when the store is
    not trusted with them.

Access control
    ``set_permissions(agent_id, can_publish=[...], can_subscribe=[...])`` (type names;
    ``None`` = every type) is persisted in the store (``aos.acl``), loaded on start and kept
    in a local cache, so the checks the bus makes on every publish and subscribe are
    dictionary look-ups. An agent without an entry is governed by
    ``config.default_permission``. An agent may always answer a request its handler is
    processing (a RESPONSE or ERROR published from inside the handler of a message carrying
    ``reply_to``): being allowed to receive a query implies being allowed to answer it.

Several processes
    Each process caches the key ring and the access-control entries. It re-reads them every
    ``refresh_interval`` seconds (default 2) and at once (at most twice a second) when it
    meets a key id it does not know, so a newly registered agent or a changed permission
    reaches other processes within that interval. :meth:`BusSecurity.reload` forces it.

What signatures do not do
    They prove who sent a message and that nothing in it changed; they do not stop a replay
    of the same message (message ids, idempotency keys and the signed timestamp are there
    for that). The signature is computed over the plaintext content and travels in the
    readable metadata, so someone holding the public key can confirm a *guess* of an
    encrypted content; do not rely on encryption alone to hide low-entropy content from
    parties who can read the engine. Metadata and routing fields are never encrypted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ..errors import (
    ConfigurationError,
    InvalidMessageError,
    PermissionDeniedError,
    SecurityError,
    StorageError,
    UnknownKeyError,
)
from ..types import REQUEST_TYPES, Message, MessageType
from .envelope import content_key_id

__all__ = [
    "NS_ACL",
    "NS_CONTENT_KEYS",
    "NS_PUBLIC_KEYS",
    "SIGNATURE_KEY",
    "SIGNER_KEY",
    "BusSecurity",
    "canonical_bytes",
    "sign_message",
    "signing_key_id",
    "verify_message",
]

log = logging.getLogger("aos.messaging.security")

#: Metadata key of the base64 Ed25519 signature.
SIGNATURE_KEY = "aos.signature"
#: Metadata key of the id of the key that made the signature.
SIGNER_KEY = "aos.signer_key"
#: Store namespace of the public key ring (key: agent id).
NS_PUBLIC_KEYS = "aos.keyring.public"
#: Store namespace of persisted content-encryption keys (key: key id).
NS_CONTENT_KEYS = "aos.keyring.content"
#: Store namespace of access-control entries (key: agent id).
NS_ACL = "aos.acl"

_SIGNATURE_KEYS = (SIGNATURE_KEY, SIGNER_KEY)
_CANON_VERSION = "aos-sig-v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SIG_B64_LEN = 88  # base64 of 64 bytes
_KEY_ID_LEN = 32
_MISS_RELOAD_GAP = 0.5
_REPLY_TYPES = frozenset({MessageType.RESPONSE, MessageType.ERROR})


# --------------------------------------------------------------------------- signatures


def signing_key_id(public_key: Ed25519PublicKey | bytes) -> str:
    """The id of a signing key: derived from the raw public key, 32 hex characters."""
    raw = public_key if isinstance(public_key, bytes) else _raw_public(public_key)
    return hashlib.sha256(b"aos-signing-key:" + raw).hexdigest()[:_KEY_ID_LEN]


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _micros(ts: datetime) -> int:
    return (ts - _EPOCH) // _MICROSECOND


def _canonical_json(value: Any) -> bytes:
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except TypeError:
        # Keys of mixed types cannot be sorted: take the JSON form first (as the envelope
        # does: every key becomes a string), then sort.
        plain = json.loads(json.dumps(value, separators=(",", ":"), allow_nan=False))
        text = json.dumps(
            plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    return text.encode("ascii")


def canonical_bytes(message: Message, key_id: str) -> bytes:
    """The bytes a signature covers: every field of ``message`` (metadata without the
    signature keys) and the signer's key id, as sorted, compact, ASCII JSON.

    The timestamp is taken as integer microseconds since the epoch, so it survives the
    envelope's RFC 3339 round trip whatever its time zone. Raises ``TypeError``/``ValueError``
    for content that is not JSON data.
    """
    metadata = {k: v for k, v in message.metadata.items() if k not in _SIGNATURE_KEYS}
    return _canonical_json(
        [
            _CANON_VERSION,
            key_id,
            message.message_id,
            message.message_type.value,
            message.sender_id,
            message.recipient_id,
            message.content,
            _micros(message.timestamp),
            message.priority.value,
            metadata,
            message.correlation_id,
            message.reply_to,
            message.ttl,
        ]
    )


def sign_message(
    message: Message, private_key: Ed25519PrivateKey, key_id: str | None = None
) -> None:
    """Sign ``message`` in place: writes ``aos.signature`` and ``aos.signer_key``."""
    kid = key_id or signing_key_id(private_key.public_key())
    try:
        data = canonical_bytes(message, kid)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMessageError(f"message cannot be signed: {exc}") from exc
    signature = private_key.sign(data)
    message.metadata[SIGNER_KEY] = kid
    message.metadata[SIGNATURE_KEY] = base64.b64encode(signature).decode("ascii")


def verify_message(message: Message, public_keys: Mapping[str, Ed25519PublicKey]) -> bool:
    """True when ``message`` carries a valid signature by one of ``public_keys`` (the
    sender's keys by key id). Never raises."""
    try:
        metadata = message.metadata
        signature = metadata.get(SIGNATURE_KEY)
        kid = metadata.get(SIGNER_KEY)
        if not isinstance(signature, str) or not isinstance(kid, str):
            return False
        if len(signature) != _SIG_B64_LEN or len(kid) != _KEY_ID_LEN:
            return False
        key = public_keys.get(kid)
        if key is None:
            return False
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, canonical_bytes(message, kid))
        return True
    except (InvalidSignature, binascii.Error, ValueError, TypeError, RecursionError):
        return False
    except Exception:  # anything odd in a hostile message is a failed verification
        log.debug("signature verification failed unexpectedly", exc_info=True)
        return False


# --------------------------------------------------------------------------- key files


def _key_file_name(agent_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", agent_id)[:64] or "_"
    digest = hashlib.sha256(agent_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{safe}.{digest}.ed25519.pem"


def _default_key_dir(config: Any) -> Path:
    return Path(str(config.data_dir)).expanduser() / "keys"


def _read_key_file(path: Path) -> Ed25519PrivateKey | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecurityError(f"cannot read the private key file {path}: {exc}") from exc
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("private key file %s is accessible by others (mode %o)", path, mode)
    except OSError:
        pass
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SecurityError(f"the private key file {path} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SecurityError(f"the private key file {path} does not hold an Ed25519 key")
    return key


def _write_key_file(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        raise SecurityError(f"cannot write the private key file {path}: {exc}") from exc


# --------------------------------------------------------------------------- records


def _now_text() -> str:
    return datetime.now(UTC).isoformat()


def _parse_public_record(agent_id: str, value: Any) -> dict[str, Ed25519PublicKey]:
    """Public keys of one key-ring record by key id (malformed entries are skipped)."""
    out: dict[str, Ed25519PublicKey] = {}
    keys = value.get("keys") if isinstance(value, dict) else None
    if not isinstance(keys, dict):
        log.warning("ignoring a malformed key-ring record for agent %r", agent_id)
        return out
    revoked = value.get("revoked") if isinstance(value, dict) else None
    revoked_ids = set(revoked) if isinstance(revoked, list) else set()
    for kid, entry in keys.items():
        try:
            raw = base64.b64decode(entry["public_key"], validate=True)
            public = Ed25519PublicKey.from_public_bytes(raw)
        except (KeyError, TypeError, ValueError, binascii.Error):
            log.warning("ignoring a malformed public key %r of agent %r", kid, agent_id)
            continue
        if signing_key_id(raw) != kid or kid in revoked_ids:
            continue
        out[kid] = public
    return out


def _field_dict(record: Any, name: str) -> dict[str, Any]:
    value = record.get(name) if isinstance(record, dict) else None
    return dict(value) if isinstance(value, dict) else {}


def _field_list(record: Any, name: str) -> list[Any]:
    value = record.get(name) if isinstance(record, dict) else None
    return list(value) if isinstance(value, list) else []


def _revoked_ids(value: Any) -> set[str]:
    revoked = value.get("revoked") if isinstance(value, dict) else None
    return {r for r in revoked if isinstance(r, str)} if isinstance(revoked, list) else set()


def _type_set(values: Iterable[MessageType | str] | None, what: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes, MessageType)):
        raise InvalidMessageError(f"{what} must be a list of message types, not a single value")
    try:
        items = list(values)
    except TypeError:
        raise InvalidMessageError(f"{what} must be a list of message types") from None
    return frozenset(MessageType.coerce(t).value for t in items)


_Perm = tuple[frozenset[str] | None, frozenset[str] | None]


def _parse_acl(agent_id: str, value: Any) -> _Perm | None:
    if not isinstance(value, dict):
        log.warning("ignoring a malformed access-control entry for %r", agent_id)
        return None
    try:
        pub = value.get("can_publish")
        sub = value.get("can_subscribe")
        return (
            None if pub is None else frozenset(MessageType.coerce(t).value for t in pub),
            None if sub is None else frozenset(MessageType.coerce(t).value for t in sub),
        )
    except (TypeError, InvalidMessageError):
        log.warning("ignoring a malformed access-control entry for %r", agent_id)
        return None


class _KeyringConflict(Exception):
    """Raised inside a store update to abort it (the record changed under us)."""


_DEFAULT = object()


class BusSecurity:
    """The bus's :class:`~.hooks.SecurityHooks`: key ring, signatures, content keys, ACL.

    ``storage`` is a StorageManager (or ``None``: one on ``config.resolved_storage_url()``
    is created, opened and closed by this object). ``key_dir`` is where private keys are
    kept (default ``<config.data_dir>/keys``; ``None`` keeps them in memory only, which is
    also the default when the store is ``memory://``). ``auto_register`` lets :meth:`sign`
    create a key for any sender that has none in the key ring (trust on first use); the
    bus's ``default_sender_id`` is always registered on demand. ``refresh_interval``
    (seconds, ``None`` = never) is how often the key ring and permissions are re-read.
    """

    def __init__(
        self,
        config: Any,
        storage: Any = None,
        *,
        key_dir: Any = _DEFAULT,
        auto_register: bool = False,
        refresh_interval: float | None = 2.0,
    ) -> None:
        if refresh_interval is not None and (
            isinstance(refresh_interval, bool)
            or not isinstance(refresh_interval, (int, float))
            or refresh_interval <= 0
        ):
            raise ConfigurationError("refresh_interval must be a positive number or None")
        self._config = config
        self._storage: Any = storage
        self._owns_storage = storage is None
        self._key_dir_arg = key_dir
        self._key_dir: Path | None = None
        self.auto_register = bool(auto_register)
        self.refresh_interval = refresh_interval
        self._default_sender = str(getattr(config, "default_sender_id", "aos"))
        self._default_allow = getattr(config, "default_permission", "allow") == "allow"
        self.signing = bool(getattr(config, "sign_messages", False))
        self.require_signatures = bool(getattr(config, "require_signatures", False))
        self._acl: dict[str, _Perm] = {}
        self.acl_active = not self._default_allow
        self._public: dict[str, dict[str, Ed25519PublicKey]] = {}
        self._revoked: dict[str, set[str]] = {}
        self._private: dict[str, tuple[str, Ed25519PrivateKey]] = {}
        self._local_content: dict[str, bytes] = {}
        self._stored_content: dict[str, bytes] = {}
        self._lock: asyncio.Lock | None = None
        self._started = False
        self._closed = False
        self._refresh_task: asyncio.Task[None] | None = None
        self._miss_task: asyncio.Task[None] | None = None
        self._last_miss_reload = 0.0

    # ------------------------------------------------------------------ lifecycle

    @property
    def storage(self) -> Any:
        """The StorageManager holding the key ring and permissions (after :meth:`start`)."""
        return self._storage

    @property
    def key_dir(self) -> Path | None:
        """Where private key files are kept; ``None`` when private keys stay in memory."""
        return self._key_dir

    def _guard(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def start(self) -> None:
        """Open the store and load the key ring, stored content keys and permissions."""
        if self._started:
            return
        if self._closed:
            raise SecurityError("this BusSecurity was closed; create a new one")
        if self._storage is None:
            from ...storage.manager import StorageManager

            self._storage = StorageManager(self._config.resolved_storage_url())
        url = str(getattr(self._storage, "url", ""))
        in_memory = url.lower().startswith("memory:")
        if self._key_dir_arg is _DEFAULT:
            self._key_dir = None if in_memory else _default_key_dir(self._config)
        else:
            self._key_dir = None if self._key_dir_arg is None else Path(self._key_dir_arg)
        try:
            await self.reload()
        except BaseException:
            if self._owns_storage:
                await self._storage.close()
                self._storage = None
            raise
        self._started = True
        if self.refresh_interval is not None and not (in_memory and self._owns_storage):
            self._refresh_task = asyncio.create_task(
                self._refresh_loop(self.refresh_interval), name="aos-security-refresh"
            )

    async def close(self) -> None:
        """Stop refreshing and close the store if this object opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._started = False
        for task in (self._refresh_task, self._miss_task):
            if task is not None:
                task.cancel()
        tasks = [t for t in (self._refresh_task, self._miss_task) if t is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._refresh_task = self._miss_task = None
        if self._owns_storage and self._storage is not None:
            await self._storage.close()

    async def __aenter__(self) -> BusSecurity:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _store(self) -> Any:
        if self._storage is None or self._closed:
            raise SecurityError("the security layer is not started (start the bus first)")
        return self._storage

    async def reload(self) -> None:
        """Re-read the key ring, stored content keys and access-control entries."""
        store = self._store()
        async with self._guard():
            public_rows = await store.list(NS_PUBLIC_KEYS)
            content_rows = await store.list(NS_CONTENT_KEYS)
            acl_rows = await store.list(NS_ACL)
            self._public = {agent: _parse_public_record(agent, v) for agent, v in public_rows}
            self._revoked = {agent: _revoked_ids(v) for agent, v in public_rows}
            self._stored_content = {
                kid: key
                for kid, value in content_rows
                if (key := _parse_content_key(kid, value)) is not None
            }
            self._acl = {
                agent: perm
                for agent, value in acl_rows
                if (perm := _parse_acl(agent, value)) is not None
            }
            self.acl_active = not self._default_allow or bool(self._acl)

    async def _refresh_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reload()
            except Exception:
                if self._closed:
                    return
                log.warning("refreshing the key ring and permissions failed", exc_info=True)

    def _reload_soon(self) -> None:
        """A key id was unknown: re-read the key ring in the background (rate-limited)."""
        if not self._started or self._closed:
            return
        if self._miss_task is not None and not self._miss_task.done():
            return
        now = time.monotonic()
        if now - self._last_miss_reload < _MISS_RELOAD_GAP:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._last_miss_reload = now
        self._miss_task = loop.create_task(self._quiet_reload(), name="aos-security-reload")

    async def _quiet_reload(self) -> None:
        try:
            await self.reload()
        except Exception:
            log.warning("re-reading the key ring failed", exc_info=True)

    # ------------------------------------------------------------------ agent keys

    def _key_path(self, agent_id: str) -> Path | None:
        return None if self._key_dir is None else self._key_dir / _key_file_name(agent_id)

    async def _load_private(self, agent_id: str) -> tuple[str, Ed25519PrivateKey] | None:
        hit = self._private.get(agent_id)
        if hit is not None:
            return hit
        path = self._key_path(agent_id)
        if path is None:
            return None
        key = await asyncio.to_thread(_read_key_file, path)
        if key is None:
            return None
        return signing_key_id(key.public_key()), key

    async def _keep_private(self, agent_id: str, key: Ed25519PrivateKey) -> str:
        path = self._key_path(agent_id)
        if path is not None:
            await asyncio.to_thread(_write_key_file, path, key)
        kid = signing_key_id(key.public_key())
        self._private[agent_id] = (kid, key)
        return kid

    async def _ring_add(
        self, agent_id: str, public: Ed25519PublicKey, *, only_if_empty: bool
    ) -> None:
        """Add a public key to the agent's key-ring record (atomically)."""
        raw = _raw_public(public)
        kid = signing_key_id(raw)

        def change(value: Any) -> Any:
            keys = _field_dict(value, "keys")
            revoked = _field_list(value, "revoked")
            live = [k for k in keys if k not in revoked]
            if only_if_empty and live and kid not in live:
                raise _KeyringConflict
            if kid in revoked:
                raise _KeyringConflict
            keys = dict(keys)
            keys[kid] = {
                "public_key": base64.b64encode(raw).decode("ascii"),
                "algorithm": "ed25519",
                "created_at": _now_text(),
            }
            return {"agent_id": agent_id, "keys": keys, "revoked": list(revoked)}

        record = await self._store().update(NS_PUBLIC_KEYS, agent_id, change)
        self._public[agent_id] = _parse_public_record(agent_id, record)
        self._revoked[agent_id] = _revoked_ids(record)

    async def _fetch_record(self, agent_id: str) -> Any:
        record = await self._store().get(NS_PUBLIC_KEYS, agent_id)
        self._public[agent_id] = _parse_public_record(agent_id, record) if record else {}
        self._revoked[agent_id] = _revoked_ids(record)
        return record

    async def register_agent_keys(self, agent_id: str, *, rotate: bool = False) -> bytes:
        """Make sure this process holds a signing key for ``agent_id`` that the key ring
        lists; return its raw 32-byte Ed25519 public key.

        Idempotent: an agent that already has a listed key here keeps it. ``rotate=True``
        makes a new key pair (the old public keys stay listed, so messages already signed
        still verify, until :meth:`revoke_agent_key`). Another process may host the same
        agent with its own key: each registers, and the key ring lists both.
        """
        if not isinstance(agent_id, str) or not agent_id:
            raise InvalidMessageError("agent_id must be a non-empty string")
        async with self._guard():
            await self._fetch_record(agent_id)
            loaded = None if rotate else await self._load_private(agent_id)
            if loaded is not None:
                kid, key = loaded
                if kid in self._public.get(agent_id, {}):
                    self._private[agent_id] = loaded
                    return _raw_public(key.public_key())
                if kid not in self._revoked.get(agent_id, set()):
                    try:
                        await self._ring_add(agent_id, key.public_key(), only_if_empty=False)
                    except _KeyringConflict:
                        pass  # revoked meanwhile: make a new key below
                    else:
                        self._private[agent_id] = loaded
                        return _raw_public(key.public_key())
            key = Ed25519PrivateKey.generate()
            await self._keep_private(agent_id, key)
            await self._ring_add(agent_id, key.public_key(), only_if_empty=False)
            return _raw_public(key.public_key())

    async def revoke_agent_key(self, agent_id: str, key_id: str) -> bool:
        """Withdraw a signing key: messages signed with it no longer verify (in other
        processes after their next refresh). Returns whether the key was listed."""
        found = False

        def change(value: Any) -> Any:
            nonlocal found
            keys = _field_dict(value, "keys")
            revoked = _field_list(value, "revoked")
            found = key_id in keys and key_id not in revoked
            keys = {k: v for k, v in keys.items() if k != key_id}
            if key_id not in revoked:
                revoked = [*revoked, key_id]
            return {"agent_id": agent_id, "keys": keys, "revoked": revoked}

        async with self._guard():
            record = await self._store().update(NS_PUBLIC_KEYS, agent_id, change)
            self._public[agent_id] = _parse_public_record(agent_id, record)
            self._revoked[agent_id] = _revoked_ids(record)
            hit = self._private.get(agent_id)
            if hit is not None and hit[0] == key_id:
                del self._private[agent_id]
        return found

    def public_keys(self, agent_id: str) -> dict[str, bytes]:
        """The agent's listed public keys (raw bytes) by key id, as this process knows them."""
        return {kid: _raw_public(k) for kid, k in self._public.get(agent_id, {}).items()}

    def has_signing_key(self, agent_id: str) -> bool:
        """True when this process holds a loaded private key for ``agent_id``."""
        return agent_id in self._private

    async def _signing_key(self, agent_id: str) -> tuple[str, Ed25519PrivateKey]:
        hit = self._private.get(agent_id)
        if hit is not None and hit[0] in self._public.get(agent_id, {}):
            return hit
        async with self._guard():
            await self._fetch_record(agent_id)
            listed = self._public.get(agent_id, {})
            loaded = await self._load_private(agent_id)
            if loaded is not None:
                kid, key = loaded
                if kid in listed:
                    self._private[agent_id] = loaded
                    return loaded
                if not listed and kid not in self._revoked.get(agent_id, set()):
                    # The store lost the record (or never had it): publish the key again.
                    try:
                        await self._ring_add(agent_id, key.public_key(), only_if_empty=True)
                    except _KeyringConflict:
                        pass
                    else:
                        self._private[agent_id] = loaded
                        return loaded
                self._private.pop(agent_id, None)
                raise UnknownKeyError(
                    f"the signing key of agent {agent_id!r} held here ({kid}) is not in the key"
                    f" ring (revoked or replaced): await bus.register_agent_keys({agent_id!r})"
                )
            if listed or not (self.auto_register or agent_id == self._default_sender):
                where = "registered by another process" if listed else "not registered"
                raise UnknownKeyError(
                    f"agent {agent_id!r} has no signing key in this process ({where}):"
                    f" await bus.register_agent_keys({agent_id!r}) where it runs"
                )
            key = Ed25519PrivateKey.generate()
            try:
                await self._ring_add(agent_id, key.public_key(), only_if_empty=True)
            except _KeyringConflict:
                raise UnknownKeyError(
                    f"agent {agent_id!r} was registered by another process meanwhile"
                ) from None
            kid = await self._keep_private(agent_id, key)
            return kid, key

    async def sign(self, message: Message) -> None:
        """Sign ``message`` with its sender's key (writes ``aos.signature`` and
        ``aos.signer_key``). A message that already carries a valid signature by its sender
        (a forwarded one) is left as it is. Raises :class:`UnknownKeyError` when this process
        holds no key for the sender."""
        if SIGNATURE_KEY in message.metadata and self.verify(message):
            return
        kid, key = await self._signing_key(message.sender_id)
        sign_message(message, key, kid)

    def verify(self, message: Message) -> bool:
        """True when ``message`` carries a valid signature by a key the key ring lists for
        its sender. Never raises."""
        if not isinstance(message, Message):
            return False
        keys = self._public.get(message.sender_id)
        kid = message.metadata.get(SIGNER_KEY)
        if keys is None or (isinstance(kid, str) and kid not in keys):
            if isinstance(kid, str) and kid not in self._revoked.get(message.sender_id, ()):
                self._reload_soon()
            return False
        return verify_message(message, keys)

    async def verify_async(self, message: Message) -> bool:
        """Like :meth:`verify`, but when the signing key is unknown here re-read the
        sender's key-ring record first (for a sender registered in another process a moment
        ago)."""
        if self.verify(message):
            return True
        if not isinstance(message, Message) or self._storage is None or self._closed:
            return False
        kid = message.metadata.get(SIGNER_KEY)
        if not isinstance(kid, str) or kid in self._public.get(message.sender_id, {}):
            return False
        try:
            await self._fetch_record(message.sender_id)
        except (StorageError, SecurityError):
            return False
        return verify_message(message, self._public.get(message.sender_id, {}))

    # ------------------------------------------------------------------ content keys

    def content_key(self, key_id: str) -> bytes | None:
        """The content-encryption key with that id, if this process knows it."""
        key = self._local_content.get(key_id)
        if key is None:
            key = self._stored_content.get(key_id)
            if key is None:
                self._reload_soon()
        return key

    def remember_content_key(self, key: bytes) -> str:
        """Add a content key to this process's key ring (memory only); return its id."""
        raw = _check_content_key(key)
        kid = content_key_id(raw)
        self._local_content[kid] = raw
        return kid

    async def store_content_key(self, key: bytes) -> str:
        """Add a content key to the shared key ring in the store, so every process using the
        store can decrypt with it; return its id."""
        raw = _check_content_key(key)
        kid = content_key_id(raw)
        await self._store().put(
            NS_CONTENT_KEYS,
            kid,
            {"key": base64.b64encode(raw).decode("ascii"), "created_at": _now_text()},
        )
        self._stored_content[kid] = raw
        self._local_content[kid] = raw
        return kid

    async def forget_content_key(self, key_id: str) -> bool:
        """Remove a content key from this process and from the store; whether it was known."""
        known = self._local_content.pop(key_id, None) is not None
        known = self._stored_content.pop(key_id, None) is not None or known
        return await self._store().delete(NS_CONTENT_KEYS, key_id) or known

    # ------------------------------------------------------------------ access control

    def _allowed(self, agent: str, kind: str, index: int) -> bool:
        perm = self._acl.get(agent)
        if perm is None:
            return self._default_allow
        allowed = perm[index]
        return allowed is None or kind in allowed

    def authorize_publish(
        self, sender_id: str, message_type: MessageType, answering: Message | None = None
    ) -> None:
        """Raise :class:`PermissionDeniedError` when ``sender_id`` may not publish that type.

        ``answering`` is the message whose handler is publishing, if any: a request addressed
        to ``sender_id`` may always be answered, whatever its entry says."""
        if self._allowed(sender_id, message_type.value, 0):
            return
        if message_type in _REPLY_TYPES and _answers(answering, sender_id):
            return
        raise PermissionDeniedError(
            f"agent {sender_id!r} may not publish {message_type.value!r} messages"
        )

    def authorize_subscribe(self, agent_id: str, message_type: MessageType) -> None:
        """Raise :class:`PermissionDeniedError` when ``agent_id`` may not receive that type."""
        if not self._allowed(agent_id, message_type.value, 1):
            raise PermissionDeniedError(
                f"agent {agent_id!r} may not subscribe to {message_type.value!r} messages"
            )

    async def set_permissions(
        self,
        agent_id: str,
        can_publish: Iterable[MessageType | str] | None,
        can_subscribe: Iterable[MessageType | str] | None,
    ) -> None:
        """Store and apply an agent's permissions (type names; ``None`` = every type)."""
        if not isinstance(agent_id, str) or not agent_id:
            raise InvalidMessageError("agent_id must be a non-empty string")
        pub = _type_set(can_publish, "can_publish")
        sub = _type_set(can_subscribe, "can_subscribe")
        record = {
            "can_publish": None if pub is None else sorted(pub),
            "can_subscribe": None if sub is None else sorted(sub),
            "updated_at": _now_text(),
        }
        async with self._guard():
            await self._store().put(NS_ACL, agent_id, record)
            self._acl[agent_id] = (pub, sub)
            self.acl_active = True

    async def remove_permissions(self, agent_id: str) -> bool:
        """Drop an agent's entry (it is governed by ``default_permission`` again)."""
        async with self._guard():
            existed: bool = await self._store().delete(NS_ACL, agent_id)
            self._acl.pop(agent_id, None)
            self.acl_active = not self._default_allow or bool(self._acl)
        return existed

    def get_permissions(self, agent_id: str) -> dict[str, list[str] | None] | None:
        """The agent's entry as ``{"can_publish": [...], "can_subscribe": [...]}`` (``None``
        for every type), or ``None`` when it has none."""
        perm = self._acl.get(agent_id)
        if perm is None:
            return None
        pub, sub = perm
        return {
            "can_publish": None if pub is None else sorted(pub),
            "can_subscribe": None if sub is None else sorted(sub),
        }


def _answers(request: Message | None, sender_id: str) -> bool:
    """True when ``request`` is a request addressed to ``sender_id`` (it may answer)."""
    return (
        request is not None
        and request.reply_to is not None
        and request.message_type in REQUEST_TYPES
        and request.recipient_id in (None, sender_id)
    )


def _check_content_key(key: Any) -> bytes:
    if not isinstance(key, (bytes, bytearray, memoryview)) or len(bytes(key)) != 32:
        raise InvalidMessageError("a content key must be 32 bytes (AES-256-GCM)")
    return bytes(key)


def _parse_content_key(key_id: str, value: Any) -> bytes | None:
    try:
        raw = base64.b64decode(value["key"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error):
        log.warning("ignoring a malformed stored content key %r", key_id)
        return None
    if len(raw) != 32 or content_key_id(raw) != key_id:
        log.warning("ignoring a stored content key whose id does not match: %r", key_id)
        return None
    return raw
