"""The one module that imports the ``azure-servicebus`` SDK (the ``azure`` extra); without
it, importing the Azure backend raises :class:`~...errors.MissingExtraError`."""

from __future__ import annotations

from ...errors import MissingExtraError

try:
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.servicebus import (
        ServiceBusMessage,
        ServiceBusReceivedMessage,
        ServiceBusReceiveMode,
        ServiceBusSubQueue,
    )
    from azure.servicebus import exceptions as sb_errors
    from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
    from azure.servicebus.aio.management import ServiceBusAdministrationClient
    from azure.servicebus.management import (
        CorrelationRuleFilter,
        FalseRuleFilter,
        SqlRuleFilter,
        TrueRuleFilter,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("Azure Service Bus", "azure") from exc

__all__ = [
    "AzureError",
    "ClientAuthenticationError",
    "CorrelationRuleFilter",
    "FalseRuleFilter",
    "HttpResponseError",
    "ResourceExistsError",
    "ResourceNotFoundError",
    "ServiceBusAdministrationClient",
    "ServiceBusClient",
    "ServiceBusMessage",
    "ServiceBusReceiveMode",
    "ServiceBusReceivedMessage",
    "ServiceBusReceiver",
    "ServiceBusSender",
    "ServiceBusSubQueue",
    "ServiceRequestError",
    "ServiceResponseError",
    "SqlRuleFilter",
    "TrueRuleFilter",
    "sb_errors",
]
