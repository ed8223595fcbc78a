"""The backend harness: every ServiceBus contract case runs once per backend.

* ``memory``, ``sqlite`` and ``nats``: :class:`EngineServiceBus` on that engine (NATS on the
  session ``nats-server``, in a namespace of its own that is deleted afterwards; the case
  carries the ``nats`` marker);
* ``azure``: :class:`AzureServiceBus` on the real SDK against the fake namespace of
  :mod:`tests.servicebus.azure_fake`.

Time is the real clock on every backend (Azure's time is the service's), so the suite holds
only what does not depend on moving it; lock expiry, TTL and scheduling on a ManualClock are
engine cases in ``tests/servicebus/test_servicebus.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from AgentOperatingSystem.messaging.servicebus_manager import ServiceBusManager
from tests.support.engines import engine_params, engine_url

from ..azure_fake import FakeNamespace, make_manager

BACKENDS = [*engine_params(), "azure"]


@dataclass
class Backend:
    """One backend under test: its name and a manager on it (closed by the fixture)."""

    name: str
    manager: ServiceBusManager

    @property
    def resubmit_reroutes(self) -> bool:
        """Whether a resubmitted dead letter goes through the topic's rules again (Azure has no
        resubmit: the copy reaches every matching subscription), rather than back into its
        own subscription only (our engines)."""
        return self.name == "azure"


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "azure":
        manager, _client, _transport = make_manager(FakeNamespace())
        try:
            yield Backend("azure", manager)
        finally:
            await manager.close()
        return
    async with engine_url(request, request.param, tmp_path, name="servicebus") as url:
        manager = ServiceBusManager(connection_string=url, poll_interval=0.05)
        try:
            yield Backend(request.param, manager)
        finally:
            await manager.close()


@pytest.fixture
def sb(backend: Backend) -> ServiceBusManager:
    """The manager of :func:`backend`."""
    return backend.manager
