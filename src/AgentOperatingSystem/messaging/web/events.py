"""Live events for ``/admin/tail``: the bus's telemetry events fanned out to the connected
clients as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any, Callable

from aiohttp import web

from ..observability.bus_telemetry import BusTelemetry

__all__ = ["EventHub", "StreamClient"]

HEARTBEAT = 15.0
"""Seconds between the comments that keep an idle stream open."""
CLIENT_QUEUE = 1000
"""Events one client may have waiting; beyond it the oldest are dropped."""

_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class StreamClient:
    """One connected stream: its filter and the bounded queue of events it has not sent.

    ``None`` in the queue is the end of the stream (the node shuts down).
    """

    def __init__(self, agent: str | None, message_type: str | None) -> None:
        self.agent = agent
        self.message_type = message_type
        self.queue: deque[dict[str, Any] | None] = deque()
        self.dropped = 0
        self.wakeup = asyncio.Event()

    def _wanted(self, event: dict[str, Any]) -> bool:
        if self.message_type is not None and event.get("message_type") != self.message_type:
            return False
        if self.agent is not None:
            agent = self.agent
            if agent not in (event.get("agent"), event.get("recipient"), event.get("sender")):
                return agent in (event.get("queues") or ())
        return True

    def offer(self, event: dict[str, Any] | None) -> None:
        """Queue ``event`` if the filter wants it (dropping the oldest when full)."""
        if event is not None and not self._wanted(event):
            return
        if len(self.queue) >= CLIENT_QUEUE:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(event)
        self.wakeup.set()

    def take(self) -> tuple[list[bytes], bool]:
        """The waiting events as SSE chunks (a ``dropped`` note first), and whether the
        stream has ended."""
        chunks: list[bytes] = []
        if self.dropped:
            note = {"event": "dropped", "count": self.dropped}
            self.dropped = 0
            chunks.append(f"event: dropped\ndata: {json.dumps(note)}\n\n".encode())
        while self.queue:
            event = self.queue.popleft()
            if event is None:
                return chunks, True
            data = json.dumps(event, default=str)
            chunks.append(f"id: {event.get('seq', '')}\ndata: {data}\n\n".encode())
        return chunks, False


class EventHub:
    """Fans the bus's telemetry events out to connected stream clients.

    It listens to the bus's :class:`~.observability.BusTelemetry` only while at least one
    client is connected, so a node nobody watches pays nothing for it. Each client has a
    bounded queue; a client too slow to keep up loses the oldest events (and is told how
    many).
    """

    def __init__(self, telemetry: BusTelemetry | None) -> None:
        self.telemetry = telemetry
        self._clients: set[StreamClient] = set()
        self._observers: list[Callable[[dict[str, Any]], None]] = []
        self._pinned = False
        self._listening = False
        self._seq = 0
        self.closed = False

    def _on_event(self, event: dict[str, Any]) -> None:
        self._seq += 1
        event["seq"] = self._seq
        for observer in self._observers:
            observer(event)
        for client in list(self._clients):
            client.offer(event)

    def _listen(self) -> None:
        """Listen to the telemetry exactly while a client is connected or the hub is
        pinned."""
        want = bool(self._clients) or self._pinned
        if self.telemetry is None or want == self._listening:
            return
        if want:
            self.telemetry.add_listener(self._on_event)
        else:
            self.telemetry.remove_listener(self._on_event)
        self._listening = want

    def observe(self, observer: Callable[[dict[str, Any]], None]) -> None:
        """Also give every event the hub hears to ``observer`` (quick, must not raise)."""
        self._observers.append(observer)

    def pin(self, pinned: bool = True) -> None:
        """Keep listening with no client connected (for the observers), or stop that."""
        self._pinned = pinned
        self._listen()

    def connect(self, agent: str | None, message_type: str | None) -> StreamClient:
        """Register a client (starts listening when it is the first)."""
        client = StreamClient(agent, message_type)
        self._clients.add(client)
        self._listen()
        return client

    def disconnect(self, client: StreamClient) -> None:
        """Remove a client (stops listening after the last, unless pinned)."""
        self._clients.discard(client)
        self._listen()

    @property
    def clients(self) -> int:
        """How many clients are connected."""
        return len(self._clients)

    def close(self) -> None:
        """Wake every client so its stream ends (node shutdown)."""
        self.closed = True
        self.pin(False)
        for client in list(self._clients):
            client.offer(None)

    async def stream(
        self, request: web.Request, agent: str | None, message_type: str | None
    ) -> web.StreamResponse:
        """Answer ``request`` with the events ``agent`` and ``message_type`` select, as
        Server-Sent Events, until the client goes away or the hub closes."""
        client = self.connect(agent, message_type)
        response = web.StreamResponse(headers=_HEADERS)
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n: connected\n\n")
            while not self.closed:
                if not client.queue:
                    client.wakeup.clear()
                    try:
                        await asyncio.wait_for(client.wakeup.wait(), HEARTBEAT)
                    except TimeoutError:
                        await response.write(b": ping\n\n")
                        continue
                chunks, ended = client.take()
                if chunks:
                    await response.write(b"".join(chunks))
                if ended:
                    break
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self.disconnect(client)
        return response
