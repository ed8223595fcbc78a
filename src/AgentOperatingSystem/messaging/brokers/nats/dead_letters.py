"""Dead letters: stream ``<ns>_DLQ``, one subject per queue, the metadata in headers.

The settler's ``dead_letter`` (:mod:`.settle`) copies a locked message here with why
(:meth:`DeadLetters.headers`: reason, error, attempts, time), then terminates it in its queue;
``put`` stores a message that never reached its queue the same way, so ``dead_letters``,
``resubmit`` and ``purge`` treat both alike. ``resubmit`` publishes a dead letter to its queue
again (a new stream message: attempts reset) and deletes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import unquote

import nats.js.errors
from nats.js import api

from ...clock import Clock
from ...errors import BrokerError, InvalidMessageError
from ...policy import DEFAULT_OPTIONS
from ..base import DeadLetter, Envelope
from .connection import Connection
from .headers import (
    H_ATTEMPTS,
    H_DEAD_AT,
    H_ERROR,
    H_INFO,
    H_MSG_ID,
    H_QUEUE,
    H_REASON,
    Info,
    fnum,
    hq,
)
from .subjects import clamp_priority, hash_text, queue_token
from .translate import caused_by
from .watch import Watches

__all__ = ["DeadLetters"]


@dataclass(slots=True)
class DeadLetters:
    """Every queue's dead-letter queue."""

    _conn: Connection
    _clock: Clock
    _watches: Watches

    async def put(
        self, envelope: Envelope, *, reason: str, error: str | None = None, attempts: int = 0
    ) -> bool:
        """Store ``envelope`` straight in its queue's dead-letter queue (never deliverable);
        False when a dead letter of that id is there already."""
        conn = self._conn
        conn.check_open()
        body = envelope.body
        if body is None:
            raise InvalidMessageError("the NATS engine needs envelopes with body bytes")
        queue, message_id = envelope.queue, envelope.message_id
        for raw in await self._scan(queue, None):
            if Info.decode((raw.headers or {}).get(H_INFO)).message_id == message_id:
                return False
        info = Info(
            clamp_priority(envelope.priority),
            self._clock.now(),
            float(envelope.available_at or 0.0),
            None if envelope.expires_at is None else float(envelope.expires_at),
            message_id,
        )
        key = f"put:{hash_text(message_id)}"
        headers = self.headers(queue, key, info.encode(), attempts, reason, error)
        subject = conn.subjects.dead(queue)
        seq, duplicate, attempt = await conn.publish(subject, body, headers)
        if not duplicate or attempt > 1:
            return True  # stored (an earlier attempt of ours, when a duplicate)
        # the server saw this id within its window: a put of the same id just now, or one
        # resubmitted or purged since?
        if await conn.live(conn.subjects.dlq_stream, seq):
            return False
        headers[H_MSG_ID] = f"{headers[H_MSG_ID]}:{os.urandom(6).hex()}"
        await conn.publish(subject, body, headers)
        return True

    def headers(
        self, queue: str, key: str, info: str, attempts: int, reason: str, error: str | None
    ) -> dict[str, str]:
        """The headers of a dead letter of ``queue``: its ``Nats-Msg-Id`` made of ``key``
        (unique per dead-lettering), the message's ``info`` and why it is here."""
        headers = {
            H_MSG_ID: f"dl:{queue_token(queue)}:{key}",
            H_QUEUE: hq(queue),
            H_INFO: info,
            H_REASON: hq(reason),
            H_ATTEMPTS: str(attempts),
            H_DEAD_AT: repr(self._clock.now()),
        }
        if error is not None:
            headers[H_ERROR] = hq(error)
        return headers

    # ------------------------------------------------------------------ reading
    def _next(self, subject: str, seq: int) -> Callable[[], Awaitable[api.RawStreamMsg]]:
        js, stream = self._conn.js, self._conn.subjects.dlq_stream
        return lambda: js.get_msg(stream, seq=seq, subject=subject, next=True)

    def _delete(self, seq: int) -> Callable[[], Awaitable[bool]]:
        js, stream = self._conn.js, self._conn.subjects.dlq_stream

        async def delete() -> bool:
            try:
                return bool(await js.delete_msg(stream, seq))
            except nats.js.errors.NotFoundError:
                return True  # an earlier attempt deleted it

        return delete

    async def _scan(self, queue: str, limit: int | None) -> list[api.RawStreamMsg]:
        subject = self._conn.subjects.dead(queue)
        out: list[api.RawStreamMsg] = []
        seq = 1
        while limit is None or len(out) < limit:
            try:
                raw = await self._conn.retrying("dead letters", self._next(subject, seq))
            except BrokerError as exc:
                if caused_by(exc, nats.js.errors.NotFoundError):
                    break
                raise
            out.append(raw)
            seq = int(raw.seq or 0) + 1
        return out

    @staticmethod
    def _decode(queue: str, raw: api.RawStreamMsg) -> DeadLetter:
        headers = raw.headers or {}
        error = headers.get(H_ERROR)
        info = Info.decode(headers.get(H_INFO))
        return DeadLetter(
            queue=queue,
            message_id=info.message_id,
            priority=info.priority,
            body=raw.data or b"",
            message=None,
            options=DEFAULT_OPTIONS,
            reason=unquote(headers.get(H_REASON, "")),
            error=unquote(error) if error is not None else None,
            attempts=int(fnum(headers.get(H_ATTEMPTS), 0.0) or 0),
            enqueued_at=info.enqueued_at,
            dead_lettered_at=fnum(headers.get(H_DEAD_AT), 0.0) or 0.0,
        )

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters, oldest first."""
        self._conn.check_open()
        if limit <= 0:
            return []
        return [self._decode(queue, raw) for raw in await self._scan(queue, limit)]

    async def resubmit(self, queue: str, message_id: str) -> bool:
        """Republish a dead letter to its queue (new stream message: attempts reset), delete it."""
        conn = self._conn
        conn.check_open()
        for raw in await self._scan(queue, None):
            letter = self._decode(queue, raw)
            if letter.message_id != message_id:
                continue
            priority = clamp_priority(letter.priority)
            info = Info(priority, letter.enqueued_at, 0.0, None, letter.message_id)
            headers = {H_MSG_ID: f"rs:{queue_token(queue)}:{raw.seq}", H_INFO: info.encode()}
            await conn.publish(conn.subjects.queue(queue, priority), raw.data or b"", headers)
            await conn.retrying("resubmit", self._delete(int(raw.seq or 0)))
            await self._watches.notify(queue, priority)
            return True
        return False

    async def purge(self, queue: str) -> int:
        """Delete the queue's dead letters; return how many."""
        conn = self._conn
        conn.check_open()
        return await conn.purge(conn.subjects.dlq_stream, conn.subjects.dead(queue))
