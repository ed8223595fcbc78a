"""Free TCP ports on 127.0.0.1 for servers a test starts (never a fixed port, never 4222)."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (bound to port 0, then closed).

    Another process may take it before the caller binds it; servers started on it are
    checked for readiness by their own helpers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
