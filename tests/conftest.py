"""Shared fixtures. NATS fixtures start their own nats-server processes (never the system one)."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("tests.support.nats_fixtures") is not None:
    from tests.support.nats_fixtures import *  # noqa: F403
