"""Sends to one node, coalesced into CloudEvents batches while requests to it are in flight.

Each remote node has a *lane*: how many requests to it are in flight, and the sends waiting.
A send goes alone while fewer than ``batch_after`` requests are in flight and nothing waits
(latency is that of one request). Otherwise it waits in the lane, and the oldest waiting send
takes everything waiting (up to ``max_batch`` messages and ``max_body_bytes``) as one batch
request once a request finishes; each send still gets its own result, and a per-message 5xx
is retried alone. A send cancelled while its batch is in flight puts the others back to go in
a new request (the node deduplicates by message id, so a resend is harmless).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from yarl import URL

from ...config.network import NetworkConfig
from ..errors import NetworkError
from ..types import Message
from .transport import Result, Transport
from .wire import ACCEPTED_BODY, CLOUDEVENTS_BATCH, DUPLICATE_BODY, dumps

__all__ = ["Lanes"]


@dataclass(slots=True)
class _Pending:
    """A send waiting to go in a batch, and where its own result goes."""

    message: Message
    body: bytes
    future: asyncio.Future[Result]


class _Lane:
    """Sends to one node: how many requests are in flight, and the sends waiting."""

    __slots__ = ("inflight", "pending", "waiters")

    def __init__(self) -> None:
        self.inflight = 0
        self.pending: deque[_Pending] = deque()
        self.waiters: list[asyncio.Future[None]] = []

    def take(self, max_messages: int, max_bytes: int) -> list[_Pending]:
        """The oldest waiting sends that fit one request (at least one)."""
        batch = [self.pending.popleft()]
        size = len(batch[0].body)
        pending = self.pending
        while pending and len(batch) < max_messages:
            nxt = len(pending[0].body) + 1
            if size + nxt > max_bytes:
                break
            size += nxt
            batch.append(pending.popleft())
        return batch

    async def wait(self) -> None:
        """Wait until a request to the node finishes or a waiting send leaves."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        await fut

    def wake(self) -> None:
        """Wake every send waiting in the lane (each looks again whether it may go)."""
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # an error nobody waits for any more is not "never retrieved"


def _clone(exc: NetworkError) -> NetworkError:
    """A copy of ``exc`` (same type, message, attributes and cause) for one batch member."""
    clone = copy.copy(exc)
    clone.__cause__ = exc.__cause__
    clone.__traceback__ = None
    return clone


def _batch_results(payload: bytes, count: int) -> list[tuple[int, bytes]] | None:
    """Per-message (status, answer) from a batch answer; None when it is not one."""
    try:
        answer = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or len(results) != count:
        return None
    out: list[tuple[int, bytes]] = []
    for r in results:
        status = r.get("status") if isinstance(r, dict) else None
        if isinstance(status, bool) or not isinstance(status, int):
            return None
        if status == 202:
            out.append((202, DUPLICATE_BODY if r.get("duplicate") else ACCEPTED_BODY))
        else:
            out.append((status, dumps({"error": r.get("error")})))
    return out


class Lanes:
    """The lanes of every remote node, sending through ``transport``."""

    def __init__(self, config: NetworkConfig, transport: Transport) -> None:
        self._config = config
        self._exchange = transport.exchange
        self._lanes: dict[str, _Lane] = {}

    def waiting(self, target: str) -> int:
        """How many sends to the node ``target`` wait to go in a batch."""
        lane = self._lanes.get(target)
        return len(lane.pending) if lane is not None else 0

    async def send(self, target: str, url: URL, message: Message, body: bytes) -> Result:
        """Send one message's ``body`` to the node ``target`` (its messages ``url``): alone,
        or in a batch while the node is busy. Returns this message's own result."""
        lane = self._lanes.get(target)
        if lane is None:
            lane = self._lanes[target] = _Lane()
        if lane.inflight < self._config.batching.batch_after and not lane.pending:
            lane.inflight += 1
            try:
                return await self._exchange(
                    "POST",
                    url,
                    body,
                    what=f"message {message.message_id} to {message.recipient_id!r}",
                )
            finally:
                lane.inflight -= 1
                lane.wake()
        return await self._batched(lane, target, url, message, body)

    async def _batched(
        self, lane: _Lane, target: str, url: URL, message: Message, body: bytes
    ) -> Result:
        """Wait in the node's lane; the oldest waiting send takes everything waiting as one
        request once fewer than ``batch_after`` are in flight."""
        item = _Pending(message, body, asyncio.get_running_loop().create_future())
        item.future.add_done_callback(_retrieved)
        lane.pending.append(item)
        config = self._config
        try:
            while not item.future.done():
                pending = lane.pending
                if lane.inflight < config.batching.batch_after and pending and pending[0] is item:
                    batch = lane.take(config.batching.max_batch, config.server.max_body_bytes - 2)
                    lane.inflight += 1
                    try:
                        await self._send_batch(target, url, batch)
                    except BaseException:
                        # cancelled mid-request: the others go back to wait for a new one
                        # (the node deduplicates by message id, so a resend is harmless)
                        lane.pending.extendleft(
                            reversed([p for p in batch if p is not item and not p.future.done()])
                        )
                        raise
                    finally:
                        lane.inflight -= 1
                        lane.wake()
                else:
                    await lane.wait()
        finally:
            if not item.future.done() and item in lane.pending:
                lane.pending.remove(item)  # cancelled while waiting
                lane.wake()
        return item.future.result()

    async def _send_one(self, url: URL, item: _Pending) -> None:
        """One waiting message in a request of its own (retries included)."""
        message = item.message
        try:
            result = await self._exchange(
                "POST",
                url,
                item.body,
                what=f"message {message.message_id} to {message.recipient_id!r}",
            )
        except NetworkError as exc:
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)

    async def _send_batch(self, target: str, url: URL, batch: list[_Pending]) -> None:
        """One request for ``batch``; sets every item's result (or error)."""
        if len(batch) == 1:
            await self._send_one(url, batch[0])
            return
        body = b"[" + b",".join(p.body for p in batch) + b"]"
        try:
            status, payload, attempts = await self._exchange(
                "POST",
                url,
                body,
                what=f"{len(batch)} messages to node {target}",
                content_type=CLOUDEVENTS_BATCH,
            )
        except NetworkError as exc:
            for p in batch:
                p.future.set_exception(_clone(exc))
            return
        if status == 413:  # the node takes smaller requests than we do: one by one
            again = batch
        else:
            results = _batch_results(payload, len(batch)) if status == 200 else None
            if results is None:  # the whole request was refused (401, 400, ...): tell each
                for p in batch:
                    p.future.set_result((status, payload, attempts))
                return
            again = []
            for p, (item_status, item_payload) in zip(batch, results):
                if item_status >= 500 or item_status == 429:
                    again.append(p)  # transient for this message: alone, with the retries
                else:
                    p.future.set_result((item_status, item_payload, attempts))
        if again:
            await asyncio.gather(*(self._send_one(url, p) for p in again))
