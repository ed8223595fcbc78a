"""The connection's own inbox: every answer addressed to this engine comes here.

``<prefix>P<n>`` answers a request (a JetStream publish, a handoff), ``<prefix>A<n>``
confirms a batch of acks, ``<prefix><consumer>`` carries a pull's status; a message with a
reply subject is a delivery of a pull, routed to the fetch of the consumer it names (or
stashed for the next fetch when none is collecting). Routing is inline: it runs per message.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from nats.aio.msg import Msg

from .acks import PendingAck
from .connection import Connection
from .headers import STATUS
from .pullers import Puller

__all__ = ["Inbox"]


class Inbox:
    """Routes what arrives on the inbox to the request, acks or puller it answers."""

    def __init__(
        self, conn: Connection, acks: dict[str, PendingAck], pullers: dict[str, Puller]
    ) -> None:
        self._conn = conn
        self._prefix_len = len(conn.inbox_prefix)
        self._requests = conn.requests
        self._acks = acks
        self._pullers = pullers
        self._sub: Any = None

    async def open(self) -> None:
        """Subscribe to the inbox."""
        conn = self._conn
        self._sub = await conn.nc.subscribe(conn.inbox_prefix + "*", cb=self._dispatch)

    async def _dispatch(self, msg: Msg) -> None:
        suffix = msg.subject[self._prefix_len :]
        reply = msg.reply
        if not reply:
            kind = suffix[:1]
            if kind == "P":
                future = self._requests.pop(suffix, None)
                if future is not None and not future.done():
                    future.set_result(msg)
                return
            if kind == "A":
                pending = self._acks.pop(suffix, None)
                if pending is not None and not pending.future.done():
                    pending.future.set_result(None)
                return
            puller = self._pullers.get(suffix)
            if puller is not None and puller.done is not None and not puller.done.done():
                headers = msg.headers or {}
                status = headers.get(STATUS, "")
                puller.done.set_result(f"{status} {headers.get('Description', '')}")
            return
        try:
            name: str | None = msg.metadata.consumer
        except Exception:
            name = None
        puller = self._pullers.get(name) if name else None
        if puller is None:
            if not self._conn.closed:
                with contextlib.suppress(Exception):
                    await self._conn.nc.publish(reply, b"-NAK")
            return
        collector = puller.collector
        if collector is not None and len(collector) < puller.want:
            collector.append(msg)
            if len(collector) >= puller.want and puller.done is not None:
                if not puller.done.done():
                    puller.done.set_result("full")
        else:
            puller.stash.append((time.monotonic(), msg))
