"""The publish path: envelopes into their queue's priority subject.

* **Message ids**: each publish carries ``Nats-Msg-Id = <queue token>:<message id>``, so a
  publish retried after a lost acknowledgement (leader change, reconnect) is stored once.
  When the server reports a duplicate on the first attempt, the engine looks up the original:
  still in the queue -> ``DuplicateMessageError``; already consumed -> stored again under a
  fresh id. A concurrent send of the same id from two processes is not detected (best effort).
* **send** of several envelopes is not one transaction on NATS 2.9 (no atomic batch): the
  checks (``max_depth``, :mod:`.dedup`) run first, then the publishes (pipelined: every
  request first, then the answers); a failure part-way leaves the others enqueued.
* **Delayed messages** (``available_at`` in the future) are stored at once; a receive that
  meets one too early hands it back (see :mod:`.receive`).
* **Unknown outcomes**: a publish that was sent and never acknowledged raises
  :class:`PublishOutcomeUnknownError` carrying the message id (:mod:`.connection`); it may
  be stored now or once the client reconnects. This engine remembers such ids for the dedup
  window, so sending the same id again from this process is deduplicated by the server and
  counted as stored (once), even when the first copy was already consumed. From another
  process the retry gets ``DuplicateMessageError`` while the first copy is queued.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from ...clock import Clock
from ...errors import DuplicateMessageError, InvalidMessageError, PublishOutcomeUnknownError
from ..base import Envelope
from .connection import Connection, RequestHandle
from .dedup import DedupKeys
from .depth import Depths
from .headers import H_INFO, H_MSG_ID, Info
from .subjects import clamp_priority, queue_token
from .watch import Watches

__all__ = ["Publisher"]

#: Unknown-outcome ids remembered before the expired ones are dropped.
_UNKNOWN_PRUNE_AT = 1024
#: A publish ready to go: (subject, body, headers).
_Prepared = tuple[str, bytes, dict[str, str]]


class Publisher:
    """Stores envelopes in their queues and wakes the queues' waiters."""

    def __init__(
        self,
        conn: Connection,
        clock: Clock,
        watches: Watches,
        depths: Depths,
        dedup: DedupKeys,
        dedup_window: float,
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._watches = watches
        self._depths = depths
        self._dedup = dedup
        self._dedup_window = dedup_window
        #: ``Nats-Msg-Id`` -> until when (monotonic) a publish of it had an unknown outcome
        self.unknown: dict[str, float] = {}

    def _unknown_outcome(self, env: Envelope, msg_id: str) -> None:
        """Remember ``msg_id`` for the dedup window: a publish of it may have been stored
        (and this process's consumers of the queue may find it)."""
        self._watches.schedule_wake(env.queue, 0.0, clamp_priority(env.priority))
        now = time.monotonic()
        if len(self.unknown) >= _UNKNOWN_PRUNE_AT:
            self.unknown = {k: t for k, t in self.unknown.items() if t > now}
        self.unknown[msg_id] = now + max(self._dedup_window, 1.0)

    def _was_unknown(self, msg_id: str) -> bool:
        """Whether a publish of ``msg_id`` had an unknown outcome within the dedup window."""
        until = self.unknown.pop(msg_id, None)
        return until is not None and until > time.monotonic()

    async def send(
        self,
        envelopes: Sequence[Envelope],
        *,
        max_depth: int | None = None,
        dedup_window: float = 0.0,
    ) -> list[bool]:
        """Enqueue the envelopes; False for a ``dedup_key`` seen within ``dedup_window``.

        Checks (``max_depth``, dedup) run before any publish; the publishes themselves are not
        one transaction (see the module docs).
        """
        self._conn.check_open()
        for env in envelopes:
            if env.body is None:
                raise InvalidMessageError("the NATS engine needs envelopes with body bytes")
        if max_depth is not None:
            await self._depths.check(_per_queue(envelopes), max_depth)
        results = [True] * len(envelopes)
        claims: dict[int, str] = {}
        window = min(float(dedup_window), self._dedup_window)
        if window > 0:
            for i, env in enumerate(envelopes):
                if env.dedup_key is not None:
                    fresh, key = await self._dedup.claim(env, window)
                    if not fresh:
                        results[i] = False
                    elif key is not None:
                        claims[i] = key
        todo = [i for i, ok in enumerate(results) if ok]
        outcomes: list[bool | BaseException]
        if len(todo) == 1:  # the common case: no pipelining to set up
            env = envelopes[todo[0]]
            try:
                outcomes = [
                    await self.publish_envelope(
                        env,
                        msg_id=f"{queue_token(env.queue)}:{env.message_id}",
                        duplicate_ok=False,
                        enqueued_at=self._clock.now(),
                    )
                ]
            except Exception as exc:
                outcomes = [exc]
        else:
            chosen = [envelopes[i] for i in todo]
            ids = [f"{queue_token(e.queue)}:{e.message_id}" for e in chosen]
            outcomes = await self.publish_envelopes(chosen, ids, duplicate_ok=False)
        failure: BaseException | None = None
        for i, outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
                if i in claims:
                    await self._dedup.unclaim(claims[i])
            else:
                results[i] = outcome
                if outcome:
                    self._depths.count_sent(envelopes[i].queue, 1)
        if failure is not None:
            raise failure
        return results

    def _prepare(self, env: Envelope, msg_id: str, enqueued_at: float) -> _Prepared:
        body = env.body
        if body is None:
            raise InvalidMessageError("the NATS engine needs envelopes with body bytes")
        priority = clamp_priority(env.priority)
        info = Info(
            priority,
            enqueued_at,
            float(env.available_at or 0.0),
            None if env.expires_at is None else float(env.expires_at),
            env.message_id,
        )
        subject = self._conn.subjects.queue(env.queue, priority)
        return subject, body, {H_MSG_ID: msg_id, H_INFO: info.encode()}

    async def _published(
        self,
        env: Envelope,
        prepared: _Prepared,
        result: tuple[int, bool, int],
        duplicate_ok: bool,
    ) -> bool:
        """After a publish: notify waiters; sort out a duplicate id (see the module docs)."""
        seq, duplicate, attempt = result
        if not duplicate:
            self.unknown.pop(prepared[2][H_MSG_ID], None)
            await self._watches.notify(env.queue, clamp_priority(env.priority))
            return True
        if duplicate_ok or attempt > 1 or self._was_unknown(prepared[2][H_MSG_ID]):
            return True  # an earlier attempt of ours landed
        # The server saw this id within its window: still queued, or already consumed?
        if await self._conn.live(self._conn.subjects.q_stream, seq):
            raise DuplicateMessageError(
                f"message {env.message_id!r} is already in queue {env.queue!r}"
            )
        subject, body, headers = prepared
        headers[H_MSG_ID] = f"{headers[H_MSG_ID]}:{os.urandom(6).hex()}"
        await self._conn.publish(subject, body, headers)
        await self._watches.notify(env.queue, clamp_priority(env.priority))
        return True

    async def publish_envelope(
        self, env: Envelope, *, msg_id: str, duplicate_ok: bool, enqueued_at: float
    ) -> bool:
        """Publish one envelope under ``msg_id`` (``duplicate_ok``: a duplicate counts as
        stored, as for an outbox whose earlier attempt landed)."""
        prepared = self._prepare(env, msg_id, enqueued_at)
        try:
            result = await self._conn.publish(*prepared, message_id=env.message_id)
        except PublishOutcomeUnknownError:
            self._unknown_outcome(env, msg_id)
            raise
        return await self._published(env, prepared, result, duplicate_ok)

    async def publish_envelopes(
        self, envs: Sequence[Envelope], msg_ids: Sequence[str], *, duplicate_ok: bool
    ) -> list[bool | BaseException]:
        """Publish several envelopes pipelined: all requests first, then the answers."""
        conn = self._conn
        now = self._clock.now()
        prepared = [self._prepare(env, mid, now) for env, mid in zip(envs, msg_ids, strict=True)]
        handles: list[RequestHandle | Exception] = []
        for item in prepared:
            try:
                handles.append(await conn.request_pub(*item, conn.attempt_timeout))
            except Exception as exc:
                handles.append(exc)
        out: list[bool | BaseException] = []
        for env, item, handle in zip(envs, prepared, handles, strict=True):
            mid = env.message_id
            try:
                if isinstance(handle, Exception):
                    result = await conn.publish_again(*item, handle, left=False, message_id=mid)
                else:
                    try:
                        seq, duplicate = await conn.pub_result(handle)
                        result = (seq, duplicate, 1)
                    except Exception as exc:
                        result = await conn.publish_again(*item, exc, left=True, message_id=mid)
                out.append(await self._published(env, item, result, duplicate_ok))
            except PublishOutcomeUnknownError as exc:
                self._unknown_outcome(env, item[2][H_MSG_ID])
                out.append(exc)
            except Exception as exc:
                out.append(exc)
        return out


def _per_queue(envelopes: Sequence[Envelope]) -> dict[str, int]:
    """How many of the envelopes go to each queue."""
    counts: dict[str, int] = {}
    for env in envelopes:
        counts[env.queue] = counts.get(env.queue, 0) + 1
    return counts
