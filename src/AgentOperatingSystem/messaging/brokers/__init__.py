"""Engines behind the broker seam, chosen by URL.

``memory://`` (in process), ``sqlite:///path.db`` (embedded, durable), ``nats://host:4222``
(NATS JetStream; the ``nats`` extra). Azure Service Bus is reached through
:class:`~AgentOperatingSystem.messaging.servicebus.manager.ServiceBusManager`.
"""

from __future__ import annotations

from ...config.urls import NATS_SCHEMES
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError
from .base import Broker, DeadLetter, Delivery, Envelope, Settlement
from .memory import MemoryBroker
from .sqlite import SqliteBroker

__all__ = [
    "Broker",
    "DeadLetter",
    "Delivery",
    "Envelope",
    "MemoryBroker",
    "Settlement",
    "SqliteBroker",
    "open_broker",
]


async def open_broker(
    url: str, *, clock: Clock = SYSTEM_CLOCK, dedup_window: float = 600.0
) -> Broker:
    """Create and start the engine an URL names."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"broker URL must be a non-empty string, got {url!r}")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        return MemoryBroker(clock)
    if scheme == "sqlite":
        broker = SqliteBroker.from_url(url, clock=clock)
        await broker.start()
        return broker
    if scheme in NATS_SCHEMES:
        from .nats import create_nats_broker

        return await create_nats_broker(url, clock=clock, dedup_window=dedup_window)
    raise ConfigurationError(
        f"unknown engine URL {url!r}: use memory://, sqlite:///path.db or nats://host:4222"
    )
