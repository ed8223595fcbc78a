"""Pytest fixtures that run real ``nats-server`` processes on free ports of 127.0.0.1.

``tests/conftest.py`` does ``from tests.support.nats_fixtures import *``.

* ``nats_server`` (session): one JetStream server reused by every test; tests isolate
  themselves with a unique namespace (``nats_namespace``).
* ``nats_url``: its client URL.
* ``nats_namespace``: a fresh namespace; all its streams and buckets are deleted afterwards.
* ``nats_private_server`` (function): a server of the test's own, free to stop/kill/restart.
* ``nats_cluster`` (function): three routed JetStream servers with a meta leader.

A missing ``nats-server`` binary is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from .nats_server import NatsServer, running, start_cluster

__all__ = [
    "nats_cluster",
    "nats_namespace",
    "nats_private_server",
    "nats_server",
    "nats_url",
    "new_nats_namespace",
]


def new_nats_namespace(prefix: str = "t") -> str:
    """A namespace no other test uses."""
    return f"{prefix}{os.urandom(6).hex()}"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream server for the whole session (stopped by PID at the end)."""
    with running(NatsServer(tmp_path_factory.mktemp("nats-session"), name="session")) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """Client URL of the session server."""
    if not nats_server.running:  # a test crashed it: bring it back for the next ones
        nats_server.restart()
    return nats_server.url


@pytest_asyncio.fixture
async def nats_namespace(nats_url: str) -> AsyncIterator[str]:
    """A unique namespace on the session server; afterwards every stream and bucket of it is
    deleted (the engine's and the StorageManager's ``KV_<ns>_STORE``)."""
    # engines.py imports this module (for new_nats_namespace): import it when the fixture runs
    from .engines import drop_nats_namespace

    namespace = new_nats_namespace()
    yield namespace
    try:
        await asyncio.wait_for(drop_nats_namespace(nats_url, namespace), 15)
    except Exception:  # the server may have been stopped by the test: nothing to clean
        pass


@pytest.fixture
def nats_private_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of this test's own (stop/kill/restart are allowed)."""
    with running(NatsServer(tmp_path / "nats-private", name="private"), kill=True) as server:
        yield server


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """Three routed JetStream servers that agree on a meta leader."""
    servers = start_cluster(3, tmp_path / "nats-cluster")
    try:
        yield servers
    finally:
        for server in servers:
            server.kill()
