"""Wake-ups between the processes that share one SQLite file: unix datagram sockets.

Every engine on a file binds one datagram socket in a directory beside it
(``<file>-wake/``; a short one under the temp directory, named after a hash of the file's
real path, when that path would be too long for a socket address). After a commit that may
make something receivable (a send, a release, a resubmit), the engine sends the names of
the queues it touched to every other socket of the directory, in one datagram per loop turn
(publishes made together share it). A receiving engine wakes its waiters of those queues at
once: an idle engine has no timer and no query running for this.

Peers are read from the directory when the engine starts, when one announces itself (a new
engine sends an empty datagram to each one it finds: every sender's address is remembered)
and on the engine's slow safety poll. A socket whose process is gone refuses the datagram
and is unlinked (pruned). A datagram that cannot be sent (a peer's buffer full) is left to
the receiver's safety poll. Without unix datagram sockets (Windows) there are no peers and
the safety poll alone sees other processes' work.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["WAKE_ALL", "Peers", "wake_dir"]

#: The datagram that asks to wake every waiter (a list of queues too long for one datagram).
WAKE_ALL = "*"
_MAX_DATAGRAM = 60_000
_ADDR_MAX = 100  # sockaddr_un.sun_path is 104-108 bytes with its NUL
_GONE = (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)


def wake_dir(db_path: Path) -> Path:
    """The directory of the file's wake-up sockets (the same in every process)."""
    real = Path(os.path.realpath(db_path))
    beside = real.with_name(real.name + "-wake")
    if len(str(beside)) + 20 <= _ADDR_MAX:
        return beside
    digest = hashlib.sha256(str(real).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"aos-wake-{digest}"


class Peers:
    """This engine's socket and the other engines' on the same file."""

    def __init__(self, db_path: Path, on_wake: Callable[[list[str]], None]) -> None:
        self.dir = wake_dir(db_path)
        self._on_wake = on_wake
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.address = ""
        self._peers: set[str] = set()
        self._pending: set[str] = set()
        self._scheduled = False

    @property
    def active(self) -> bool:
        """True when bound (the platform has unix datagram sockets and the folder is usable)."""
        return self._sock is not None

    @property
    def peers(self) -> frozenset[str]:
        """Socket paths of the other engines known now."""
        return frozenset(self._peers)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind this engine's socket, read the peers and announce this one to them."""
        if self._sock is not None or not hasattr(socket, "AF_UNIX"):
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError:
            return  # no sockets here: the safety poll alone sees other processes
        address = str(self.dir / f"{os.getpid()}-{os.urandom(4).hex()}")
        try:
            try:
                sock.bind(address)
            except FileNotFoundError:  # the last peer out removed the folder meanwhile
                self.dir.mkdir(parents=True, exist_ok=True)
                sock.bind(address)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._readable)
        except (OSError, NotImplementedError):
            sock.close()
            return
        self._sock, self._loop, self.address = sock, loop, address
        self.refresh()
        for peer in list(self._peers):
            self._send_to(peer, b"")

    def refresh(self) -> None:
        """Read the peers from the directory."""
        if self._sock is None:
            return
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        own = os.path.basename(self.address)
        self._peers = {str(self.dir / n) for n in names if n != own}

    def send(self, queues: list[str]) -> None:
        """Tell the peers these queues may have something receivable (sent on the next loop
        turn, together with the other queues touched meanwhile)."""
        if self._sock is None or not self._peers:
            return
        self._pending.update(queues)
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, set()
        if not pending or self._sock is None:
            return
        payload = "\n".join(sorted(pending)).encode()
        if len(payload) > _MAX_DATAGRAM:
            payload = WAKE_ALL.encode()
        for peer in list(self._peers):
            self._send_to(peer, payload)

    def _send_to(self, peer: str, payload: bytes) -> None:
        sock = self._sock
        assert sock is not None
        try:
            sock.sendto(payload, peer)
        except BlockingIOError:
            pass  # its buffer is full: it has wake-ups to read; its safety poll covers it
        except OSError as exc:
            if exc.errno in _GONE:  # the process is gone: prune its socket
                self._peers.discard(peer)
                try:
                    os.unlink(peer)
                except OSError:
                    pass

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        queues: list[str] = []
        while True:
            try:
                data, sender = sock.recvfrom(65_536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if isinstance(sender, str) and sender and sender != self.address:
                self._peers.add(sender)
            if data:
                queues.extend(data.decode("utf-8", "replace").split("\n"))
        if queues:
            self._on_wake(queues)

    def close(self) -> None:
        """Stop reading, close the socket and remove it from the directory."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        try:
            os.unlink(self.address)
        except OSError:
            pass
        try:
            self.dir.rmdir()  # the last one out removes the folder
        except OSError:
            pass
