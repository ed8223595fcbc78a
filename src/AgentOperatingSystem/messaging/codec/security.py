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
    Each process caches the key ring and the access-control entries. It catches up with the
    store every ``refresh_interval`` seconds (default 2) and at once (at most twice a second)
    when it meets a key id it does not know, so a newly registered agent or a changed
    permission reaches other processes within that interval. :meth:`BusSecurity.reload`
    re-reads everything. On a store that is a
    :class:`~AgentOperatingSystem.storage.base.ChangeFeed` (NATS) catching up reads only what
    changed since the last time, and asks one small question when nothing did, so its cost
    does not grow with the number of agents; on the others (memory, SQLite: local, cheap)
    it re-reads the three namespaces.

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
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ...storage.base import ChangeFeed
from ..errors import (
    ConfigurationError,
    InvalidMessageError,
    SecurityError,
    StorageError,
    UnknownKeyError,
)
from ..types import Message, MessageType
from .acl import NS_ACL, AccessControl, permission_sets
from .keyfiles import HeldKey, PrivateKeys, default_key_dir
from .keyring import NS_CONTENT_KEYS, NS_PUBLIC_KEYS, ContentKeys, KeyRing, KeyringConflict
from .signing import (
    SIGNATURE_KEY,
    SIGNER_KEY,
    canonical_bytes,
    raw_public,
    sign_message,
    signing_key_id,
    verify_message,
)

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

_MISS_RELOAD_GAP = 0.5
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

    It composes four parts, each in its own module: the private keys held here
    (:class:`~.keyfiles.PrivateKeys`), the public key ring (:class:`~.keyring.KeyRing`), the
    content keys (:class:`~.keyring.ContentKeys`) and the access control
    (:class:`~.acl.AccessControl`). This object owns the store, the lock that orders their
    changes, and the background re-reads. The checks the bus makes on every message
    (:attr:`verify`, :attr:`content_key`, :attr:`authorize_publish`,
    :attr:`authorize_subscribe`) are the parts' own methods, bound once here, so a check
    costs no call through this object.
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
        self.auto_register = bool(auto_register)
        self.refresh_interval = refresh_interval
        self._default_sender = str(getattr(config, "default_sender_id", "aos"))
        self.signing = bool(getattr(config, "sign_messages", False))
        self.require_signatures = bool(getattr(config, "require_signatures", False))
        self._keys = PrivateKeys()
        self._ring = KeyRing(self._store, self._reload_soon)
        self._content = ContentKeys(self._store, self._reload_soon)
        self._access = AccessControl(
            self._store, default_allow=getattr(config, "default_permission", "allow") == "allow"
        )
        self.acl_active = self._access.active
        #: True when ``message`` carries a valid signature by a key the key ring lists for
        #: its sender; never raises (:meth:`~.keyring.KeyRing.verify`).
        self.verify = self._ring.verify
        #: The content-encryption key with that id, if this process knows it
        #: (:meth:`~.keyring.ContentKeys.get`).
        self.content_key = self._content.get
        #: Raise :class:`PermissionDeniedError` when the sender may not publish that type
        #: (:meth:`~.acl.AccessControl.authorize_publish`).
        self.authorize_publish = self._access.authorize_publish
        #: Raise :class:`PermissionDeniedError` when the agent may not receive that type
        #: (:meth:`~.acl.AccessControl.authorize_subscribe`).
        self.authorize_subscribe = self._access.authorize_subscribe
        self._lock: asyncio.Lock | None = None
        self._started = False
        self._closed = False
        self._refresh_task: asyncio.Task[None] | None = None
        self._miss_task: asyncio.Task[None] | None = None
        self._last_miss_reload = 0.0
        #: the store's change feed, when it has one (decided at start), and how far this
        #: process has read it
        self._feed: ChangeFeed | None = None
        self._cursor = 0
        #: catch-ups made, and how many of them read the whole namespaces (for tests)
        self.refreshes = 0
        self.full_reloads = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def storage(self) -> Any:
        """The StorageManager holding the key ring and permissions (after :meth:`start`)."""
        return self._storage

    @property
    def key_dir(self) -> Path | None:
        """Where private key files are kept; ``None`` when private keys stay in memory."""
        return self._keys.key_dir

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
        from ...storage.manager import StorageManager

        if self._storage is None:
            self._storage = StorageManager(self._config.resolved_storage_url())
        backend = self._storage.backend if isinstance(self._storage, StorageManager) else None
        self._feed = backend if isinstance(backend, ChangeFeed) else None
        url = str(getattr(self._storage, "url", ""))
        in_memory = url.lower().startswith("memory:")
        if self._key_dir_arg is _DEFAULT:
            self._keys.key_dir = None if in_memory else default_key_dir(self._config)
        else:
            self._keys.key_dir = None if self._key_dir_arg is None else Path(self._key_dir_arg)
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
            if self._feed is not None:
                # the cursor first: what is written while the namespaces are read is read
                # again by the next catch-up, never missed
                await store.start()  # opened: the cursor is asked of the engine itself
                self._cursor = await self._feed.change_cursor()
            self.full_reloads += 1
            public_rows = await store.list(NS_PUBLIC_KEYS)
            content_rows = await store.list(NS_CONTENT_KEYS)
            acl_rows = await store.list(NS_ACL)
            self._ring.load(public_rows)
            self._content.load(content_rows)
            self._access.load(acl_rows)
            self.acl_active = self._access.active

    async def refresh(self) -> None:
        """Catch up with the store: what changed since the last time on a change feed (one
        small request when nothing did), else a :meth:`reload`."""
        feed = self._feed
        if feed is None:
            await self.reload()
            return
        self._store()
        from ...storage.manager import decode_value

        async with self._guard():
            self.refreshes += 1
            now = await feed.change_cursor()
            if now == self._cursor:
                return
            if now < self._cursor:  # the store was emptied and made again: read it whole
                self._cursor = -1
            else:
                parts = (
                    (NS_PUBLIC_KEYS, self._ring.apply),
                    (NS_CONTENT_KEYS, self._content.apply),
                    (NS_ACL, self._access.apply),
                )
                for ns, apply in parts:
                    for change in await feed.changes(ns, self._cursor, now):
                        try:
                            value = None if change.text is None else decode_value(change.text)
                        except Exception:
                            log.warning("ignoring an unreadable record %r in %s", change.key, ns)
                            continue
                        apply(change.key, value)
                self.acl_active = self._access.active
                self._cursor = now
                return
        await self.reload()

    async def _refresh_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
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
            await self.refresh()
        except Exception:
            log.warning("re-reading the key ring failed", exc_info=True)

    # ------------------------------------------------------------------ agent keys

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
            await self._ring.fetch(agent_id)
            loaded = None if rotate else await self._keys.load(agent_id)
            if loaded is not None and await self._relist(agent_id, loaded):
                return raw_public(loaded[1].public_key())
            key = Ed25519PrivateKey.generate()
            await self._keys.keep(agent_id, key)
            await self._ring.add(agent_id, key.public_key(), only_if_empty=False)
            return raw_public(key.public_key())

    async def _relist(self, agent_id: str, loaded: HeldKey) -> bool:
        """Hold ``loaded`` when the key ring lists it or it can be listed again (not
        revoked); False when a new key is needed."""
        kid, key = loaded
        if kid in self._ring.keys_of(agent_id):
            self._keys.held[agent_id] = loaded
            return True
        if self._ring.is_revoked(agent_id, kid):
            return False
        try:
            await self._ring.add(agent_id, key.public_key(), only_if_empty=False)
        except KeyringConflict:
            return False  # revoked meanwhile
        self._keys.held[agent_id] = loaded
        return True

    async def revoke_agent_key(self, agent_id: str, key_id: str) -> bool:
        """Withdraw a signing key: messages signed with it no longer verify (in other
        processes after their next refresh). Returns whether the key was listed."""
        async with self._guard():
            found = await self._ring.revoke(agent_id, key_id)
            self._keys.drop(agent_id, key_id)
        return found

    def public_keys(self, agent_id: str) -> dict[str, bytes]:
        """The agent's listed public keys (raw bytes) by key id, as this process knows them."""
        return self._ring.public_keys(agent_id)

    def has_signing_key(self, agent_id: str) -> bool:
        """True when this process holds a loaded private key for ``agent_id``."""
        return agent_id in self._keys.held

    async def _signing_key(self, agent_id: str) -> HeldKey:
        hit = self._keys.held.get(agent_id)
        if hit is not None and hit[0] in self._ring.public.get(agent_id, {}):
            return hit
        async with self._guard():
            await self._ring.fetch(agent_id)
            listed = self._ring.keys_of(agent_id)
            loaded = await self._keys.load(agent_id)
            if loaded is not None:
                return await self._republish(agent_id, loaded, listed)
            if listed or not (self.auto_register or agent_id == self._default_sender):
                where = "registered by another process" if listed else "not registered"
                raise UnknownKeyError(
                    f"agent {agent_id!r} has no signing key in this process ({where}):"
                    f" await bus.register_agent_keys({agent_id!r}) where it runs"
                )
            key = Ed25519PrivateKey.generate()
            try:
                await self._ring.add(agent_id, key.public_key(), only_if_empty=True)
            except KeyringConflict:
                raise UnknownKeyError(
                    f"agent {agent_id!r} was registered by another process meanwhile"
                ) from None
            kid = await self._keys.keep(agent_id, key)
            return kid, key

    async def _republish(
        self, agent_id: str, loaded: HeldKey, listed: Mapping[str, Ed25519PublicKey]
    ) -> HeldKey:
        """The key file's key, when the key ring lists it (``listed``: the agent's keys) or
        lists nothing for the agent (the store lost the record, or never had it: publish the
        key again); else :class:`UnknownKeyError` (revoked or replaced)."""
        kid, key = loaded
        if kid in listed:
            self._keys.held[agent_id] = loaded
            return loaded
        if not listed and not self._ring.is_revoked(agent_id, kid):
            try:
                await self._ring.add(agent_id, key.public_key(), only_if_empty=True)
            except KeyringConflict:
                pass
            else:
                self._keys.held[agent_id] = loaded
                return loaded
        self._keys.held.pop(agent_id, None)
        raise UnknownKeyError(
            f"the signing key of agent {agent_id!r} held here ({kid}) is not in the key"
            f" ring (revoked or replaced): await bus.register_agent_keys({agent_id!r})"
        )

    async def sign(self, message: Message) -> None:
        """Sign ``message`` with its sender's key (writes ``aos.signature`` and
        ``aos.signer_key``). A message that already carries a valid signature by its sender
        (a forwarded one) is left as it is. Raises :class:`UnknownKeyError` when this process
        holds no key for the sender."""
        if SIGNATURE_KEY in message.metadata and self.verify(message):
            return
        kid, key = await self._signing_key(message.sender_id)
        sign_message(message, key, kid)

    async def verify_async(self, message: Message) -> bool:
        """Like :meth:`verify`, but when the signing key is unknown here re-read the
        sender's key-ring record first (for a sender registered in another process a moment
        ago)."""
        if self.verify(message):
            return True
        if not isinstance(message, Message) or self._storage is None or self._closed:
            return False
        kid = message.metadata.get(SIGNER_KEY)
        if not isinstance(kid, str) or kid in self._ring.keys_of(message.sender_id):
            return False
        try:
            await self._ring.fetch(message.sender_id)
        except (StorageError, SecurityError):
            return False
        return verify_message(message, self._ring.keys_of(message.sender_id))

    # ------------------------------------------------------------------ content keys

    def remember_content_key(self, key: bytes) -> str:
        """Add a content key to this process's key ring (memory only); return its id."""
        return self._content.remember(key)

    async def store_content_key(self, key: bytes) -> str:
        """Add a content key to the shared key ring in the store, so every process using the
        store can decrypt with it; return its id."""
        return await self._content.store(key)

    async def forget_content_key(self, key_id: str) -> bool:
        """Remove a content key from this process and from the store; whether it was known."""
        return await self._content.forget(key_id)

    # ------------------------------------------------------------------ access control

    async def set_permissions(
        self,
        agent_id: str,
        can_publish: Iterable[MessageType | str] | None,
        can_subscribe: Iterable[MessageType | str] | None,
    ) -> None:
        """Store and apply an agent's permissions (type names; ``None`` = every type)."""
        permissions = permission_sets(agent_id, can_publish, can_subscribe)
        async with self._guard():
            await self._access.put(agent_id, permissions)
            self.acl_active = True

    async def remove_permissions(self, agent_id: str) -> bool:
        """Drop an agent's entry (it is governed by ``default_permission`` again)."""
        async with self._guard():
            existed = await self._access.remove(agent_id)
            self.acl_active = self._access.active
        return existed

    def get_permissions(self, agent_id: str) -> dict[str, list[str] | None] | None:
        """The agent's entry as ``{"can_publish": [...], "can_subscribe": [...]}`` (``None``
        for every type), or ``None`` when it has none."""
        return self._access.get(agent_id)
