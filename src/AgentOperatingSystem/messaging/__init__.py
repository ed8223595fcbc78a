"""AOS Messaging: the messaging layer of the Agent Operating System.

Everything public is re-exported here::

    from AgentOperatingSystem.messaging import MessageBus, Message, MessageType
"""

from .clock import Clock, ManualClock, SystemClock
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .policy import DeliveryOptions, RetryPolicy
from .types import DeliveryMode, Message, MessagePriority, MessageType, new_message_id
from ..config.messagebus import MessageBusConfig
from .bus import EventStream, MessageBus, PublishResult, Subscription
from .router import MessageRouter

__all__ = [
    "Clock",
    "DeliveryMode",
    "DeliveryOptions",
    "EventStream",
    "ManualClock",
    "Message",
    "MessageBus",
    "MessageBusConfig",
    "MessagePriority",
    "MessageRouter",
    "MessageType",
    "PublishResult",
    "RetryPolicy",
    "Subscription",
    "SystemClock",
    "new_message_id",
    *_errors_all,
]
