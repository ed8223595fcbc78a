"""The spec's import path for :class:`ServiceBusManager`; Service Bus lives in
:mod:`.servicebus` (manager, backends, entities, sqlfilter)."""

from .servicebus.backend import ServiceBusBackend
from .servicebus.engine import EngineServiceBus
from .servicebus.entities import (
    DEFAULT_RULE_NAME,
    SERVICEBUS_KEY,
    OutgoingMessage,
    RuleProperties,
    SubscriptionProperties,
    SubscriptionRuntimeProperties,
    TopicProperties,
    TopicRuntimeProperties,
    application_properties,
    is_azure_connection_string,
    servicebus_info,
    subscription_queue,
)
from .servicebus.manager import ServiceBusManager
from .servicebus.receiver import SubscriptionReceiver

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
