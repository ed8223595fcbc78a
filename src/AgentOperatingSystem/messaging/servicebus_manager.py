"""The spec's import path for :class:`ServiceBusManager`; Service Bus lives in
:mod:`.servicebus` (manager, backends, entities, sqlfilter). Every public name of
:mod:`.servicebus.entities` is re-exported here too."""

from .servicebus import entities
from .servicebus.backend import ServiceBusBackend
from .servicebus.engine import EngineServiceBus
from .servicebus.entities import *  # noqa: F403  (every name of entities.__all__)
from .servicebus.manager import ServiceBusManager
from .servicebus.receiver import SubscriptionReceiver

__all__ = ["EngineServiceBus", "ServiceBusBackend", "ServiceBusManager", "SubscriptionReceiver"]
__all__ += entities.__all__
