"""Shared fixtures. NATS fixtures start their own nats-server processes (never the system one)."""

from __future__ import annotations

import importlib.util
import os

import pytest

if importlib.util.find_spec("tests.support.nats_fixtures") is not None:
    from tests.support.engines import each_engine_url  # noqa: F401  (a fixture)
    from tests.support.nats_fixtures import *  # noqa: F403


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Live Azure tests need a real namespace: without the connection string they are
    deselected (reported as such), not skipped."""
    if os.environ.get("AZURE_SERVICE_BUS_CONNECTION_STRING"):
        return
    live = [item for item in items if item.get_closest_marker("azure_live")]
    if live:
        config.hook.pytest_deselected(items=live)
        items[:] = [item for item in items if not item.get_closest_marker("azure_live")]
