"""The spec's import path for :class:`MessageBus`; the bus lives in :mod:`.core`."""

from .core.bus import EventStream, Handler, MessageBus, PublishResult, Subscription

__all__ = ["EventStream", "Handler", "MessageBus", "PublishResult", "Subscription"]
