"""Fixtures of the engine tests (the contract harness is in ``contract/conftest.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.support.engines import engine_url


@pytest.fixture
async def nats_engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The engine URL of a fresh namespace on the session nats-server (``nats://...?namespace=``),
    whose streams and buckets are deleted after the test."""
    async with engine_url(request, "nats", tmp_path) as url:
        yield url
