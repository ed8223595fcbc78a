"""AOS Messaging: the messaging layer of the Agent Operating System.

Everything public is re-exported here (loaded on first access, so importing a submodule
such as ``AgentOperatingSystem.messaging.types`` stays cheap and free of import cycles)::

    from AgentOperatingSystem.messaging import MessageBus, Message, MessageType
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all

_EXPORTS: dict[str, str] = {
    "Clock": ".clock",
    "ManualClock": ".clock",
    "SystemClock": ".clock",
    "DeliveryOptions": ".policy",
    "RetryPolicy": ".policy",
    "DeliveryMode": ".types",
    "Message": ".types",
    "MessagePriority": ".types",
    "MessageType": ".types",
    "new_message_id": ".types",
    "MessageBusConfig": "..config.messagebus",
    "EventStream": ".core.bus",
    "MessageBus": ".core.bus",
    "PublishResult": ".core.bus",
    "Subscription": ".core.bus",
    "InputRequired": ".core.turns",
    "MessageRouter": ".router",
    "ConversationSystem": ".conversation_system",
    "NetworkProtocol": ".network.node",
    "ConnectionPool": ".network.pool",
    "NetworkConfig": "..config.network",
    "ServiceBusManager": ".servicebus.manager",
    "CircuitBreaker": "..reliability.circuit_breaker",
    "StorageManager": "..storage.manager",
}

__all__ = sorted([*_EXPORTS, *_errors_all])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from ..config.messagebus import MessageBusConfig as MessageBusConfig
    from ..reliability.circuit_breaker import CircuitBreaker as CircuitBreaker
    from .clock import Clock as Clock
    from .clock import ManualClock as ManualClock
    from .clock import SystemClock as SystemClock
    from .core.bus import EventStream as EventStream
    from .core.bus import MessageBus as MessageBus
    from .core.bus import PublishResult as PublishResult
    from .core.bus import Subscription as Subscription
    from .policy import DeliveryOptions as DeliveryOptions
    from .policy import RetryPolicy as RetryPolicy
    from .router import MessageRouter as MessageRouter
    from .types import DeliveryMode as DeliveryMode
    from .types import Message as Message
    from .types import MessagePriority as MessagePriority
    from .types import MessageType as MessageType
    from .types import new_message_id as new_message_id
