"""Event streams: ``bus.stream_events(...)`` as an async iterator over matching events.

Each stream has its own temporary queue bound to EVENT; :meth:`EventStream.__anext__` runs
rounds of the one consume loop (:meth:`~.consume.Consumer.poll`) on it until a matching
event is buffered. Closing the stream removes its binding and its queue.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from ..brokers.base import Delivery
from ..errors import BrokerClosedError
from ..types import Message, MessageType, new_message_id
from .consume import Consumer, Handle, Samples

__all__ = ["EventStream", "StreamHost"]


class StreamHost:
    """What a stream needs of its bus: a consumer of a queue with the bus's loop, the
    fan-out bindings, and the registry of open streams (closed when the bus stops)."""

    def __init__(
        self,
        consumer: Callable[[str, Handle], Consumer],
        bind: Callable[[str, str], Awaitable[None]],
        unbind: Callable[[str, str], Awaitable[None]],
        delete_queue: Callable[[str], Awaitable[None]],
    ) -> None:
        self.consumer = consumer
        self.bind = bind
        self.unbind = unbind
        self.delete_queue = delete_queue
        self.streams: set[EventStream] = set()

    async def close_all(self) -> None:
        """Close every open stream."""
        for stream in list(self.streams):
            await stream.aclose()


class EventStream:
    """An async iterator over matching events, with its own temporary queue."""

    def __init__(self, host: StreamHost, names: frozenset[str] | None, agent_id: str | None):
        self._host = host
        self._names = names
        self.queue = f"_stream.{agent_id or 'anon'}.{new_message_id()[:12]}"
        self.ready = asyncio.Event()
        self._closed = False
        self._buffer: list[Message] = []
        self._consumer = host.consumer(self.queue, self._take)

    def __aiter__(self) -> EventStream:
        return self

    async def _open(self) -> None:
        if not self.ready.is_set():
            await self._host.bind(MessageType.EVENT.value, self.queue)
            self._host.streams.add(self)
            self.ready.set()

    async def __aenter__(self) -> EventStream:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _matches(self, msg: Message) -> bool:
        if self._names is None:
            return True
        name = msg.content.get("event", msg.content.get("event_type"))
        return isinstance(name, str) and name in self._names

    async def _take(self, d: Delivery, msg: Message, samples: Samples | None) -> bool:
        """The stream queue's ``handle``: keep a matching event; ack every event."""
        if self._matches(msg):
            self._buffer.append(msg)
        return True

    async def __anext__(self) -> Message:
        if self._closed:
            raise StopAsyncIteration
        await self._open()
        while not self._closed:
            if self._buffer:
                return self._buffer.pop(0)
            if not await self._consumer.poll():
                break
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the stream and remove its queue and binding."""
        if self._closed:
            return
        self._closed = True
        self._consumer.open = False
        host = self._host
        host.streams.discard(self)
        if self.ready.is_set():
            try:
                await host.unbind(MessageType.EVENT.value, self.queue)
                await host.delete_queue(self.queue)
            except BrokerClosedError:
                pass
