"""Direct delivery: envelopes handed to a receiver that is live right now, nothing stored.

* :meth:`Direct.listen` / :meth:`Direct.send` (the seam's ``listen_direct`` and
  ``send_direct``): core subject ``<ns>.d.<token>``; the listener says whether it took the
  message. Used for responses to a requester that is waiting right now.
* :meth:`Direct.hand_off`: a request whose recipient has a consumer that is live right now
  (in this process, or in another one through core subject ``<ns>.h.<token>``, queue group
  ``<ns>.h``) is handed to it directly; the consumer's side is :mod:`.handoff`. Messages
  with a ``dedup_key`` or a delivery time are never handed off.

Whenever a method answers False the caller falls back to the durable ``send``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Awaitable, Callable, Sequence

from nats.aio.msg import Msg

from ...clock import Clock
from ..base import Envelope
from .connection import Connection
from .handoff import HANDOFF_TIMEOUT, Handoffs
from .headers import H_INFO, H_WAIT, Info
from .subjects import clamp_priority

__all__ = ["Direct", "Handler"]

_log = logging.getLogger(__name__)

#: A direct listener: takes an envelope's body, says whether it took it.
Handler = Callable[[bytes], Awaitable[bool]]


class Direct:
    """Direct listeners of this process, and direct sends and handoffs to others."""

    def __init__(
        self,
        conn: Connection,
        clock: Clock,
        handoffs: Handoffs,
        store: Callable[[Sequence[Envelope]], Awaitable[list[bool]]],
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._handoffs = handoffs
        self._store = store  # the durable send, for an answer nobody takes
        self._listeners: dict[str, Handler] = {}

    async def listen(self, queue: str, handler: Handler) -> None:
        """Take envelopes sent to ``queue`` with :meth:`send` while this process runs:
        ``handler(body)`` says whether it took the message (its answer goes back to the
        sender). Used for responses to a requester that is waiting right now."""
        conn = self._conn
        conn.check_open()

        async def on_message(msg: Msg) -> None:
            taken = await _take(handler, queue, msg.data)
            if msg.reply:
                with contextlib.suppress(Exception):
                    await msg.respond(b"1" if taken else b"0")

        with conn.errors("listen"):
            await conn.nc.subscribe(conn.subjects.direct(queue), cb=on_message)
        self._listeners[queue] = handler

    async def send(
        self, env: Envelope, *, reply_for: str | None = None, timeout: float = 2.0
    ) -> bool:
        """Hand ``env`` straight to a live :meth:`listen` listener of its queue (core NATS,
        nothing stored). ``reply_for``: the id of the handed-off request ``env`` answers;
        while its sender still waits on the handoff, the answer goes there. True only when
        the listener confirmed that it took the message (or the handoff's sender got it); on
        False the caller must fall back to the durable send."""
        conn = self._conn
        conn.check_open()
        body = env.body
        if body is None:
            return False
        if reply_for is not None and await self._handoffs.answer(reply_for, env, body):
            return True
        try:
            answer = await conn.nc.request(conn.subjects.direct(env.queue), body, timeout=timeout)
        except Exception:  # no responders, timeout, reconnecting: use the durable path
            return False
        return bool(answer.data == b"1")

    async def hand_off(
        self, env: Envelope, *, reply_queue: str | None = None, wait: float = HANDOFF_TIMEOUT
    ) -> bool:
        """Hand ``env`` straight to a consumer of its queue that is live right now (this
        process first, then any other through core NATS); nothing is stored. True when a
        consumer took it; on False the caller must send it the durable way.

        A remote consumer answers within ``wait`` seconds: declined, taken, or (when its
        handler was quick) with the response, which goes to the :meth:`listen` listener of
        ``reply_queue`` (stored in ``reply_queue`` when the listener refuses)."""
        conn = self._conn
        conn.check_open()
        body = env.body
        if body is None or env.dedup_key is not None or env.available_at:
            return False
        info = Info(
            clamp_priority(env.priority),
            self._clock.now(),
            0.0,
            None if env.expires_at is None else float(env.expires_at),
            env.message_id,
        )
        if self._handoffs.take(env.queue, body, info):
            return True
        wait = max(0.001, min(float(wait), HANDOFF_TIMEOUT))
        try:  # through the engine's inbox: cheaper than nc.request
            handle = await conn.request_pub(
                conn.subjects.handoff(env.queue),
                body,
                {H_INFO: info.encode(), H_WAIT: repr(wait)},
                wait,
            )
            answer = await conn.answer(handle)
        except Exception:  # timeout, reconnecting: the durable path
            return False
        headers = answer.headers or {}
        if H_INFO not in headers:  # "0", "1", or a status (503: no consumer anywhere)
            return bool(answer.data == b"1")
        # the consumer answered at once: the response itself
        if reply_queue is None:
            return True  # the caller asked for no answer (the bus always names its queue)
        handler = self._listeners.get(reply_queue)
        if handler is None or not await _take(handler, reply_queue, answer.data):
            rinfo = Info.decode(headers.get(H_INFO))  # refused or nobody listens: store it
            await self._store(
                [Envelope(reply_queue, rinfo.message_id, rinfo.priority, answer.data)]
            )
        return True


async def _take(handler: Handler, queue: str, body: bytes) -> bool:
    """Offer ``body`` to a listener; a listener that fails did not take it."""
    try:
        return await handler(body)
    except Exception:
        _log.exception("direct delivery handler for %s failed", queue)
        return False
