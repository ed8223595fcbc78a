"""The consume path: lock and hand out up to N messages, priority 0 first, FIFO within one.

``receive`` drains priority 0 first, then 1..4, pulling from each priority's consumer exactly
the number still wanted (:mod:`.pullers`). A delayed message met too early (``available_at``
in the future) is handed back with ``nak(delay=remaining)`` and not returned; such phantom
redeliveries are counted in the meta bucket, so ``attempts`` (JetStream's ``num_delivered``)
leaves them out. Handoffs waiting for this queue's consumer are returned first, with no pull.
A message without the ``Aos`` header (a foreign producer's CloudEvent) is given one
(:func:`.headers.foreign_info`) and handed out like any other: admission decodes its body.
"""

from __future__ import annotations

import time

from nats.aio.msg import Msg

from ...clock import Clock
from ...policy import DEFAULT_OPTIONS
from ..base import Delivery
from .connection import Connection
from .handoff import Handoffs
from .headers import H_ERROR, H_INFO, Info, attempts, foreign_info, uq
from .locks import Held, Locks
from .meta import Meta, MetaStore
from .pullers import EMPTY_HINT_SECONDS, Puller, Pullers
from .watch import Watches

__all__ = ["Receiver"]


class Receiver:
    """``receive`` for the facade: pulls, delay hand-backs and lock bookkeeping."""

    def __init__(
        self,
        conn: Connection,
        clock: Clock,
        pullers: Pullers,
        locks: Locks,
        meta: MetaStore,
        watches: Watches,
        handoffs: Handoffs,
    ) -> None:
        self._conn = conn
        self._clock = clock
        self._monotonic = clock.monotonic  # the handoff window's time
        self._pullers = pullers
        self._locks = locks
        self._meta = meta
        self._watched = watches.by_queue
        self._watches = watches
        self._handoffs = handoffs
        self._waiting = handoffs.waiting

    async def receive(self, queue: str, max_messages: int, lock_seconds: float) -> list[Delivery]:
        """Lock and return up to ``max_messages`` available messages: priority, then FIFO."""
        self._conn.check_open()
        if max_messages <= 0:
            return []
        watch = self._watched.get(queue)
        if watch is None or not watch.ready:
            await self._watches.discover(queue)  # prepared on first use
            watch = self._watched[queue]
        watch.active_at = self._monotonic()  # a consumer at work (see the handoff window)
        waiting = self._waiting.get(queue)
        if waiting:
            # handed off while the queue was empty: no pull needed (that is their point)
            hand_out = self._handoffs.delivery
            return [hand_out(waiting.popleft()) for _ in range(min(max_messages, len(waiting)))]
        await self._locks.expire()
        consumers = await self._pullers.for_queue(queue, lock_seconds)
        fetch = self._pullers.fetch
        out: list[Delivery] = []
        for puller in consumers.slots:
            if puller is None or puller.skip(time.monotonic()):
                continue
            while len(out) < max_messages:
                want = max_messages - len(out)
                started = time.monotonic()
                msgs = await fetch(puller, want)
                if puller.missing:
                    await self._pullers.for_queue(queue, lock_seconds)
                    if want > len(msgs):
                        msgs += await fetch(puller, want - len(msgs))
                if len(msgs) < want and not puller.missing:
                    # drained: skip this priority for a moment unless something happens
                    puller.empty_until = started + EMPTY_HINT_SECONDS
                    if puller.next_event <= started:
                        puller.next_event = float("inf")
                delayed = 0
                for msg in msgs:
                    delivery = await self._to_delivery(puller, msg, lock_seconds)
                    if delivery is None:
                        delayed += 1
                    else:
                        out.append(delivery)
                if len(msgs) < want or delayed == 0:
                    break
            if len(out) >= max_messages:
                break
        watch.drained = len(out) < max_messages
        watch.active_at = self._monotonic()
        return out

    async def _to_delivery(self, puller: Puller, msg: Msg, lock_seconds: float) -> Delivery | None:
        """Lock a fetched message and make its Delivery; None when it is not due yet (then
        it is handed back until it is)."""
        headers = msg.headers or {}
        md = msg.metadata
        seq = int(md.sequence.stream)
        raw_info = headers.get(H_INFO)
        if raw_info is None:
            # a foreign producer's message: kept with it, so its dead letter names its id
            info = foreign_info(headers, puller.priority, md.stream, seq, md.timestamp.timestamp())
            headers[H_INFO] = info.encode()
            msg.headers = headers
        else:
            info = Info.decode(raw_info)
        delivered = int(md.num_delivered)
        meta = await self._meta.get(seq) if delivered > 1 else None
        available_at = info.available_at
        now = self._clock.now()
        if available_at > now + 0.001:
            meta = meta or Meta()
            meta.phantom += 1
            await self._meta.save(seq, meta)
            remaining = available_at - now
            with self._conn.errors("nak"):
                await msg.nak(delay=remaining)
            self._watches.schedule_wake(puller.queue, remaining, puller.priority)
            return None
        message_id = info.message_id
        token = f"{seq}.{delivered}"
        self._locks.hold(
            token,
            Held(
                msg=msg,
                queue=puller.queue,
                message_id=message_id,
                puller=puller,
                seq=seq,
                deadline=now + lock_seconds,
                real_deadline=time.monotonic() + puller.ack_wait,
                has_meta=meta is not None,
            ),
        )
        puller.may_have(time.monotonic() + puller.ack_wait)  # if the lock runs out
        if meta is not None:
            last_error = meta.error
        else:
            stored = headers.get(H_ERROR)
            last_error = None if stored is None else uq(stored)
        return Delivery(
            queue=puller.queue,
            message_id=message_id,
            token=token,
            attempts=attempts(delivered, meta.phantom if meta else 0, headers),
            priority=puller.priority,
            enqueued_at=info.enqueued_at,
            expires_at=info.expires_at,
            body=msg.data,
            message=None,
            options=DEFAULT_OPTIONS,
            last_error=last_error,
        )
