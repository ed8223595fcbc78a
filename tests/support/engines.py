"""Engine URLs for tests that run once per engine (``memory``, ``sqlite``, ``nats``).

The ``each_engine_url`` fixture (``tests/conftest.py`` makes it available everywhere) runs
the test once per engine, each time with a fresh place on it::

    @pytest.fixture
    async def store(each_engine_url: str) -> AsyncIterator[StorageManager]:
        async with StorageManager(each_engine_url) as manager:
            yield manager

For another choice of engines, use :func:`engine_params` as a fixture's ``params`` (the NATS
case carries the ``nats`` marker) and :func:`engine_url` inside the fixture, as
``each_engine_url`` does.

``memory://`` is private to each bus or store; SQLite is a file in the test's ``tmp_path``;
NATS is a new namespace on the session ``nats-server`` whose streams and buckets (queues,
dead letters, bindings, records and the StorageManager bucket) are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from .nats_fixtures import new_nats_namespace

__all__ = [
    "ENGINES",
    "LOCAL_ENGINES",
    "drop_nats_namespace",
    "each_engine_url",
    "engine_params",
    "engine_url",
    "namespace_streams",
]

#: Every engine a bus or a StorageManager runs on.
ENGINES = ("memory", "sqlite", "nats")
#: The engines in this process (no server; time can be a ManualClock).
LOCAL_ENGINES = ("memory", "sqlite")


def engine_params(engines: Iterable[str] = ENGINES) -> list[Any]:
    """``params`` for a per-engine fixture: the names, with ``nats`` marked ``nats``."""
    out: list[Any] = []
    for engine in engines:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
        out.append(pytest.param(engine, marks=pytest.mark.nats) if engine == "nats" else engine)
    return out


async def namespace_streams(server_url: str, namespace: str) -> list[str]:
    """The names of the JetStream streams of ``namespace`` (``<ns>_*`` and ``KV_<ns>_*``)."""
    import nats

    mine = (f"{namespace}_", f"KV_{namespace}_")
    nc = await nats.connect(servers=[server_url], connect_timeout=5, max_reconnect_attempts=0)
    try:
        names: list[str] = []
        offset = 0
        while True:
            reply = await nc.request(
                "$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode(), timeout=5
            )
            page = json.loads(reply.data)
            batch = page.get("streams") or []
            names.extend(name for name in batch if name.startswith(mine))
            offset += len(batch)
            if not batch or offset >= int(page.get("total", 0)):
                return sorted(names)
    finally:
        await nc.close()


async def drop_nats_namespace(server_url: str, namespace: str) -> list[str]:
    """Delete every stream and bucket of ``namespace`` on the server; return their names."""
    import nats

    names = await namespace_streams(server_url, namespace)
    if not names:
        return []
    nc = await nats.connect(servers=[server_url], connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        for name in names:
            await js.delete_stream(name)
    finally:
        await nc.close()
    return names


@asynccontextmanager
async def engine_url(
    request: pytest.FixtureRequest, engine: str, tmp_path: Path, *, name: str = "aos"
) -> AsyncIterator[str]:
    """A URL of a place on ``engine`` no other test uses (``name`` names the SQLite file).

    For ``nats`` it asks for the ``nats_url`` fixture (the session server) and, on leaving,
    deletes the namespace's streams and buckets; a server the test stopped is left alone."""
    if engine == "memory":
        yield "memory://"
    elif engine == "sqlite":
        yield f"sqlite:///{tmp_path / f'{name}.db'}"
    elif engine == "nats":
        import nats.errors

        server_url: str = request.getfixturevalue("nats_url")
        namespace = new_nats_namespace()
        try:
            yield f"{server_url}?namespace={namespace}"
        finally:
            try:
                await asyncio.wait_for(drop_nats_namespace(server_url, namespace), 15)
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                # the test stopped or killed the server: nothing left to clean there
                request.node.add_report_section("teardown", "nats", f"not dropped: {exc!r}")
    else:
        raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")


@pytest.fixture(params=engine_params())
async def each_engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh place on each engine in turn: a test that uses it runs once per engine."""
    async with engine_url(request, request.param, tmp_path) as url:
        yield url
