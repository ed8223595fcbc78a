"""Choosing a backend: a shared engine, an engine URL (``memory://``, ``sqlite:///path.db``,
``nats://host:4222``) or an Azure Service Bus connection string (``Endpoint=sb://...``)."""

from __future__ import annotations

from ..brokers.base import Broker
from ..clock import Clock
from ..errors import ConfigurationError
from .backend import ServiceBusBackend
from .engine import EngineServiceBus
from .entities import is_azure_connection_string

__all__ = ["backend_for"]

_ENGINE_SCHEMES = ("memory", "sqlite", "nats", "tls")


def backend_for(
    connection_string: str | None,
    *,
    broker: Broker | None,
    clock: Clock | None,
    poll_interval: float,
    metadata_refresh_seconds: float,
) -> ServiceBusBackend:
    """The backend a manager's arguments name: an engine (a shared ``broker``, or an engine
    URL) or Azure (a connection string); :class:`ConfigurationError` for anything else."""
    if broker is not None:
        return EngineServiceBus(
            connection_string,
            broker=broker,
            clock=clock,
            poll_interval=poll_interval,
            metadata_refresh_seconds=metadata_refresh_seconds,
        )
    if not isinstance(connection_string, str) or not connection_string.strip():
        raise ConfigurationError(
            "ServiceBusManager needs connection_string: an Azure Service Bus connection"
            " string (Endpoint=sb://...) or an engine URL (memory://, sqlite:///path.db,"
            " nats://host:4222); got " + repr(connection_string)
        )
    if is_azure_connection_string(connection_string):
        from .azure import AzureServiceBus  # the azure extra: imported only when used

        return AzureServiceBus(connection_string)
    scheme = connection_string.split(":", 1)[0].lower()
    if scheme not in _ENGINE_SCHEMES:
        raise ConfigurationError(
            f"unknown service bus connection string {connection_string!r}: use"
            " Endpoint=sb://..., memory://, sqlite:///path.db or nats://host:4222"
        )
    return EngineServiceBus(
        connection_string,
        clock=clock,
        poll_interval=poll_interval,
        metadata_refresh_seconds=metadata_refresh_seconds,
    )
