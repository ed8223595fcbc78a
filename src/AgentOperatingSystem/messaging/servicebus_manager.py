"""The spec's import path for :class:`ServiceBusManager`; Service Bus lives in
:mod:`.servicebus`."""

from .servicebus.manager import (
    DEFAULT_RULE_NAME,
    SERVICEBUS_KEY,
    EngineServiceBus,
    OutgoingMessage,
    RuleProperties,
    ServiceBusBackend,
    ServiceBusManager,
    SubscriptionProperties,
    SubscriptionReceiver,
    SubscriptionRuntimeProperties,
    TopicProperties,
    TopicRuntimeProperties,
    application_properties,
    is_azure_connection_string,
    servicebus_info,
    subscription_queue,
)

__all__ = [
    "DEFAULT_RULE_NAME",
    "SERVICEBUS_KEY",
    "EngineServiceBus",
    "OutgoingMessage",
    "RuleProperties",
    "ServiceBusBackend",
    "ServiceBusManager",
    "SubscriptionProperties",
    "SubscriptionReceiver",
    "SubscriptionRuntimeProperties",
    "TopicProperties",
    "TopicRuntimeProperties",
    "application_properties",
    "is_azure_connection_string",
    "servicebus_info",
    "subscription_queue",
]
