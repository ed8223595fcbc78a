"""The memory skeletons of :mod:`benchmarks.ceilings`, in a module of their own so that
``python -m benchmarks.ceilings --compiled`` can also measure them compiled with mypyc.

Throwaway models for that measurement, not code of the library.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import time
from collections import deque
from types import CoroutineType
from typing import Any, Awaitable, Callable, NamedTuple

from AgentOperatingSystem.messaging.types import Message

_current: contextvars.ContextVar[Any] = contextvars.ContextVar("current", default=None)


class Bare:
    """At-least-once at its barest: queued, locked per batch, acked per batch."""

    def __init__(self) -> None:
        self.q: deque[Message] = deque()
        self.live: dict[str, Message] = {}
        self.waiter: asyncio.Future[None] | None = None

    async def publish(self, m: Message) -> None:
        if m.message_id in self.live:
            raise ValueError("duplicate")
        self.live[m.message_id] = m
        self.q.append(m)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def consume(self, handler: Callable[[Message], Awaitable[None]], n: int) -> None:
        done = 0
        while done < n:
            if not self.q:
                self.waiter = asyncio.get_running_loop().create_future()
                await self.waiter
                continue
            batch = [self.q.popleft() for _ in range(min(256, len(self.q)))]
            locked = {m.message_id: m for m in batch}
            acks: list[Message] = []
            for m in batch:
                try:
                    await handler(m)
                except Exception:
                    continue
                acks.append(m)
            for m in acks:
                del self.live[m.message_id]
                del locked[m.message_id]
            done += len(batch)


class Result(NamedTuple):
    message_id: str
    queues: tuple[str, ...]


class Entry:
    __slots__ = ("attempts", "live", "locked_until", "message", "message_id", "token")

    def __init__(self, message_id: str, message: Message) -> None:
        self.message_id = message_id
        self.message = message
        self.token = ""
        self.attempts = 0
        self.locked_until = 0.0
        self.live = True


class Featured:
    """The bare skeleton plus the least the bus's contract needs on the same path."""

    def __init__(self) -> None:
        self.lanes: list[deque[Entry]] = [deque() for _ in range(5)]
        self.live: dict[str, Entry] = {}
        self.inflight: dict[str, Entry] = {}
        self.locks: list[tuple[float, str, list[Entry]]] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.tokens = itertools.count()

    async def publish(self, m: Message) -> Result:
        if type(m) is not Message or m.recipient_id is None or _current.get() is not None:
            raise ValueError("not the fast path")
        live = self.live
        if m.message_id in live:
            raise ValueError("duplicate")
        if len(live) >= 10**9:
            raise ValueError("full")
        entry = Entry(m.message_id, m)
        live[m.message_id] = entry
        self.lanes[m.priority._value_].append(entry)
        if self.waiters:
            for w in self.waiters:
                if not w.done():
                    w.set_result(None)
            self.waiters.clear()
        return Result(m.message_id, (m.recipient_id,))

    def receive(self, n: int, lock: float) -> list[Entry]:
        token = str(next(self.tokens))
        until = time.time() + lock
        out: list[Entry] = []
        for lane in self.lanes:
            while lane and len(out) < n:
                e = lane.popleft()
                if not e.live or e.token:
                    continue
                e.token, e.locked_until = token, until
                e.attempts += 1
                self.inflight[e.message_id] = e
                out.append(e)
        if out:
            self.locks.append((until, token, out))
        return out

    def ack(self, entries: list[Entry]) -> list[bool]:
        now = time.time()
        out = []
        for d in entries:
            e = self.inflight.get(d.message_id)
            if e is None or e.token != d.token or e.locked_until <= now:
                out.append(False)
                continue
            del self.inflight[d.message_id]
            del self.live[d.message_id]
            e.token, e.live = "", False
            out.append(True)
        return out

    async def consume(self, handlers: dict[Any, Any], n: int) -> None:
        done = 0
        held: dict[str, Entry] = {}
        while done < n:
            batch = self.receive(256, 30.0)
            if not batch:
                w = asyncio.get_running_loop().create_future()
                self.waiters.append(w)
                await w
                continue
            for d in batch:
                held[d.message_id] = d
            acks: list[Entry] = []
            for d in batch:
                m = d.message
                handler: Any = handlers.get(m.message_type) or handlers.get(None)
                token = _current.set((self, m))
                try:
                    r = handler(m)
                    if type(r) is CoroutineType:
                        await r
                except Exception:
                    _current.reset(token)
                    continue
                _current.reset(token)
                acks.append(d)
            self.ack(acks)
            for d in acks:
                held.pop(d.message_id, None)
            done += len(batch)
