"""Private signing keys: the PEM files they live in, and the keys this process holds.

A private key stays where its agent runs, never in the shared store: a PKCS#8 PEM file
``<key_dir>/<agent>.<hash>.ed25519.pem`` written with mode ``0600`` in a ``0700`` directory
(atomically: a temporary file, fsync, rename), or, when there is no key directory, this
process's memory only. :class:`PrivateKeys` is the set of keys held here, by agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import SecurityError
from .signing import signing_key_id

__all__ = [
    "HeldKey",
    "PrivateKeys",
    "default_key_dir",
    "key_file_name",
    "read_key_file",
    "write_key_file",
]

log = logging.getLogger("aos.messaging.security")

HeldKey = tuple[str, Ed25519PrivateKey]
"""A private key with its key id."""


def key_file_name(agent_id: str) -> str:
    """The key file's name for ``agent_id``: a readable, safe prefix and a hash of the id."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", agent_id)[:64] or "_"
    digest = hashlib.sha256(agent_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{safe}.{digest}.ed25519.pem"


def default_key_dir(config: Any) -> Path:
    """``<config.data_dir>/keys``."""
    return Path(str(config.data_dir)).expanduser() / "keys"


def read_key_file(path: Path) -> Ed25519PrivateKey | None:
    """The Ed25519 key in ``path``, or ``None`` when there is no such file.

    Raises :class:`SecurityError` for a file that cannot be read or holds something else;
    warns when the file is readable by others."""
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


def write_key_file(path: Path, key: Ed25519PrivateKey) -> None:
    """Write ``key`` to ``path`` (mode 0600, directory 0700) atomically; raise
    :class:`SecurityError` when it cannot be written."""
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


class PrivateKeys:
    """The signing keys this process holds, by agent, and the files that keep them.

    ``key_dir`` is where key files live (``None``: keys stay in memory only). :attr:`held`
    is what is loaded and in use; :meth:`load` also finds a key that is only on disk.
    """

    def __init__(self, key_dir: Path | None = None) -> None:
        self.key_dir = key_dir
        #: Loaded keys in use, by agent id.
        self.held: dict[str, HeldKey] = {}

    def path(self, agent_id: str) -> Path | None:
        """The key file of ``agent_id`` (``None`` without a key directory)."""
        return None if self.key_dir is None else self.key_dir / key_file_name(agent_id)

    async def load(self, agent_id: str) -> HeldKey | None:
        """The held key of ``agent_id``, else the one in its key file (not held by this
        call), else ``None``."""
        hit = self.held.get(agent_id)
        if hit is not None:
            return hit
        path = self.path(agent_id)
        if path is None:
            return None
        key = await asyncio.to_thread(read_key_file, path)
        if key is None:
            return None
        return signing_key_id(key.public_key()), key

    async def keep(self, agent_id: str, key: Ed25519PrivateKey) -> str:
        """Write ``key`` to the agent's key file (when there is a key directory) and hold
        it; return its key id."""
        path = self.path(agent_id)
        if path is not None:
            await asyncio.to_thread(write_key_file, path, key)
        kid = signing_key_id(key.public_key())
        self.held[agent_id] = (kid, key)
        return kid

    def drop(self, agent_id: str, key_id: str | None = None) -> None:
        """Stop holding the agent's key (only if its id is ``key_id``, when given)."""
        hit = self.held.get(agent_id)
        if hit is not None and (key_id is None or hit[0] == key_id):
            del self.held[agent_id]
