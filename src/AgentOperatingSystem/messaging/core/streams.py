"""Event streams: ``bus.stream_events(...)`` as an async iterator over matching events.

Each stream has its own temporary queue bound to EVENT; :meth:`EventStream.__anext__` runs
rounds of the one consume loop (:meth:`~.consume.Consumer.poll`) on it until a matching
event is buffered. Closing the stream removes its binding and its queue. The queue is named
``_stream.<bus instance id>.<agent>.<n>``: while a stream is open its bus keeps a heartbeat,
and the streams of a bus that is gone are removed by the others (:mod:`.collect`).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from ..brokers.base import Delivery
from ..errors import BrokerClosedError
from ..types import Message, MessageType
from .collect import new_stream_queue
from .consume import Consumer, Handle, Samples

__all__ = ["EventStream", "StreamHost"]


class StreamHost:
    """What a stream needs of its bus: a consumer of a queue with the bus's loop, the
    fan-out bindings, the engine's ``prepare`` for its queue, and the registry of open
    streams (closed when the bus stops). ``alive`` is awaited when the first stream opens and
    ``quiet`` when the last one closes (the bus's heartbeat, see :mod:`.collect`)."""

    def __init__(
        self,
        consumer: Callable[[str, Handle], Consumer],
        bind: Callable[[str, str], Awaitable[None]],
        unbind: Callable[[str, str], Awaitable[None]],
        delete_queue: Callable[[str], Awaitable[None]],
        prepare: Callable[[str], Awaitable[None]],
        *,
        instance_id: str = "bus",
        alive: Callable[[], Awaitable[None]] | None = None,
        quiet: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.consumer = consumer
        self.instance_id = instance_id
        self.alive = alive
        self.quiet = quiet
        self.prepare = prepare
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
        self.queue = new_stream_queue(host.instance_id, agent_id)
        self.ready = asyncio.Event()
        self._closed = False
        self._buffer: list[Message] = []
        #: the task of a read waiting in the consumer's poll (cancelled by aclose())
        self._reader: asyncio.Task[object] | None = None
        self._interrupted = False
        self._consumer = host.consumer(self.queue, self._take)

    def __aiter__(self) -> EventStream:
        return self

    async def _open(self) -> None:
        if not self.ready.is_set():
            await self._host.prepare(self.queue)
            await self._host.bind(MessageType.EVENT.value, self.queue)
            host = self._host
            first = not host.streams
            host.streams.add(self)
            self.ready.set()
            if first and host.alive is not None:
                await host.alive()

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
        reader = asyncio.current_task()
        while not self._closed:
            if self._buffer:
                return self._buffer.pop(0)
            self._reader = reader
            try:
                if not await self._consumer.poll():
                    break
            except asyncio.CancelledError:
                if reader is None or not self._interrupted:
                    raise
                reader.uncancel()  # closed by aclose() in another task: the end, not a cancel
                break
            finally:
                self._reader = None
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the stream and remove its queue and binding."""
        if self._closed:
            return
        self._closed = True
        self._consumer.open = False
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            # a read waiting for the next event (the consumer waits on the engine with no
            # timeout): end it now
            self._interrupted = True
            reader.cancel()
        host = self._host
        host.streams.discard(self)
        if self.ready.is_set():
            try:
                await host.unbind(MessageType.EVENT.value, self.queue)
                await host.delete_queue(self.queue)
                if not host.streams and host.quiet is not None:
                    await host.quiet()
            except BrokerClosedError:
                pass
