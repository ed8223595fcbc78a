"""The shared key ring: agents' public signing keys and content-encryption keys.

Both live in namespaces of the StorageManager that every process using the same store
shares, and each process keeps a cached copy that the security layer re-reads:

* ``aos.keyring.public`` (:class:`KeyRing`): one record per agent, ``{"agent_id": ...,
  "keys": {<key id>: {"public_key": <base64>, "algorithm": "ed25519", "created_at": ...}},
  "revoked": [<key id>, ...]}``. A revoked key is dropped from ``keys`` and listed in
  ``revoked`` so that it is never listed again.
* ``aos.keyring.content`` (:class:`ContentKeys`): one record per AES-256 key, ``{"key":
  <base64>, "created_at": ...}`` under its key id. A stored content key is as secret as
  the store. Keys added with :meth:`ContentKeys.remember` stay in this process.

Records read from the store are untrusted: malformed entries are logged and skipped, and a
key whose id does not match its bytes is ignored.
"""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import UTC, datetime
from typing import Any, Callable, Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import InvalidMessageError
from ..types import Message
from .sealing import content_key_id
from .signing import SIGNER_KEY, raw_public, signing_key_id, verify_message

__all__ = [
    "NS_CONTENT_KEYS",
    "NS_PUBLIC_KEYS",
    "ContentKeys",
    "KeyRing",
    "KeyringConflict",
]

log = logging.getLogger("aos.messaging.security")

#: Store namespace of the public key ring (key: agent id).
NS_PUBLIC_KEYS = "aos.keyring.public"
#: Store namespace of persisted content-encryption keys (key: key id).
NS_CONTENT_KEYS = "aos.keyring.content"

Rows = Iterable[tuple[str, Any]]
"""``(key, value)`` rows of one store namespace."""
Store = Callable[[], Any]
"""Returns the StorageManager (or raises when the security layer is not started)."""


class KeyringConflict(Exception):
    """Raised inside a store update to abort it (the record changed under us)."""


# --------------------------------------------------------------------------- records


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


# --------------------------------------------------------------------------- public keys


class KeyRing:
    """This process's copy of the public key ring, and the changes it makes to it.

    :attr:`public` lists each agent's live keys by key id, :attr:`revoked` the ids of its
    withdrawn ones. ``store()`` gives the StorageManager the changes go to; ``on_miss`` is
    called when :meth:`verify` meets a key id it does not know (the security layer then
    re-reads the ring in the background).
    """

    def __init__(self, store: Store, on_miss: Callable[[], None]) -> None:
        #: Live public keys, by agent id and key id.
        self.public: dict[str, dict[str, Ed25519PublicKey]] = {}
        #: Ids of revoked keys, by agent id.
        self.revoked: dict[str, set[str]] = {}
        self._store = store
        self._on_miss = on_miss

    def load(self, rows: Rows) -> None:
        """Replace the cache with the records of the whole namespace."""
        rows = list(rows)
        self.public = {agent: _parse_public_record(agent, v) for agent, v in rows}
        self.revoked = {agent: _revoked_ids(v) for agent, v in rows}

    def _take(self, agent_id: str, record: Any) -> None:
        self.public[agent_id] = _parse_public_record(agent_id, record)
        self.revoked[agent_id] = _revoked_ids(record)

    def apply(self, agent_id: str, record: Any) -> None:
        """One record of the namespace changed in the store: ``record`` is its value now,
        or None when it was deleted."""
        if record is None:
            self.public.pop(agent_id, None)
            self.revoked.pop(agent_id, None)
        else:
            self._take(agent_id, record)

    def keys_of(self, agent_id: str) -> dict[str, Ed25519PublicKey]:
        """The agent's live keys by key id (empty when it has none)."""
        return self.public.get(agent_id, {})

    def is_revoked(self, agent_id: str, key_id: str) -> bool:
        """True when the agent's key ``key_id`` was revoked."""
        return key_id in self.revoked.get(agent_id, ())

    def public_keys(self, agent_id: str) -> dict[str, bytes]:
        """The agent's listed public keys (raw bytes) by key id, as this process knows them."""
        return {kid: raw_public(k) for kid, k in self.public.get(agent_id, {}).items()}

    def verify(self, message: Message) -> bool:
        """True when ``message`` carries a valid signature by a key the key ring lists for
        its sender. Never raises."""
        if not isinstance(message, Message):
            return False
        keys = self.public.get(message.sender_id)
        kid = message.metadata.get(SIGNER_KEY)
        if keys is None or (isinstance(kid, str) and kid not in keys):
            if isinstance(kid, str) and kid not in self.revoked.get(message.sender_id, ()):
                self._on_miss()
            return False
        return verify_message(message, keys)

    async def fetch(self, agent_id: str) -> Any:
        """Re-read one agent's record into the cache; return the record."""
        record = await self._store().get(NS_PUBLIC_KEYS, agent_id)
        self.public[agent_id] = _parse_public_record(agent_id, record) if record else {}
        self.revoked[agent_id] = _revoked_ids(record)
        return record

    async def add(self, agent_id: str, public: Ed25519PublicKey, *, only_if_empty: bool) -> None:
        """Add a public key to the agent's record (atomically). Raises
        :class:`KeyringConflict` when the key was revoked, or, with ``only_if_empty``, when
        the agent already lists another live key."""
        raw = raw_public(public)
        kid = signing_key_id(raw)

        def change(value: Any) -> Any:
            keys = _field_dict(value, "keys")
            revoked = _field_list(value, "revoked")
            live = [k for k in keys if k not in revoked]
            if only_if_empty and live and kid not in live:
                raise KeyringConflict
            if kid in revoked:
                raise KeyringConflict
            keys = dict(keys)
            keys[kid] = {
                "public_key": base64.b64encode(raw).decode("ascii"),
                "algorithm": "ed25519",
                "created_at": datetime.now(UTC).isoformat(),
            }
            return {"agent_id": agent_id, "keys": keys, "revoked": list(revoked)}

        self._take(agent_id, await self._store().update(NS_PUBLIC_KEYS, agent_id, change))

    async def revoke(self, agent_id: str, key_id: str) -> bool:
        """Withdraw the agent's key ``key_id``; return whether it was listed."""
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

        self._take(agent_id, await self._store().update(NS_PUBLIC_KEYS, agent_id, change))
        return found


# --------------------------------------------------------------------------- content keys


def check_content_key(key: Any) -> bytes:
    """``key`` as bytes when it is a 32-byte AES-256 key, else :class:`InvalidMessageError`."""
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


class ContentKeys:
    """The content-encryption keys this process can decrypt with, by key id: its own
    (:meth:`remember`) and those of the store (:meth:`store`, :meth:`load`).

    ``store()`` gives the StorageManager; ``on_miss`` is called when :meth:`get` is asked
    for a key id it does not know."""

    def __init__(self, store: Store, on_miss: Callable[[], None]) -> None:
        self._local: dict[str, bytes] = {}
        self._stored: dict[str, bytes] = {}
        self._store = store
        self._on_miss = on_miss

    def load(self, rows: Rows) -> None:
        """Replace the stored keys with those of the whole namespace."""
        self._stored = {
            kid: key for kid, value in rows if (key := _parse_content_key(kid, value)) is not None
        }

    def apply(self, key_id: str, value: Any) -> None:
        """One stored key changed: ``value`` is its record now, or None when deleted."""
        key = None if value is None else _parse_content_key(key_id, value)
        if key is None:
            self._stored.pop(key_id, None)
        else:
            self._stored[key_id] = key

    def get(self, key_id: str) -> bytes | None:
        """The content-encryption key with that id, if this process knows it."""
        key = self._local.get(key_id)
        if key is None:
            key = self._stored.get(key_id)
            if key is None:
                self._on_miss()
        return key

    def remember(self, key: bytes) -> str:
        """Add a content key to this process only; return its id."""
        raw = check_content_key(key)
        kid = content_key_id(raw)
        self._local[kid] = raw
        return kid

    async def store(self, key: bytes) -> str:
        """Add a content key to the store's key ring (and to this process); return its id."""
        raw = check_content_key(key)
        kid = content_key_id(raw)
        record = {
            "key": base64.b64encode(raw).decode("ascii"),
            "created_at": datetime.now(UTC).isoformat(),
        }
        await self._store().put(NS_CONTENT_KEYS, kid, record)
        self._stored[kid] = raw
        self._local[kid] = raw
        return kid

    async def forget(self, key_id: str) -> bool:
        """Remove a content key from this process and from the store; whether it was known."""
        known = self._local.pop(key_id, None) is not None
        known = self._stored.pop(key_id, None) is not None or known
        deleted: bool = await self._store().delete(NS_CONTENT_KEYS, key_id)
        return deleted or known
