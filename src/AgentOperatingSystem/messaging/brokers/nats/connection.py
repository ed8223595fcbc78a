"""The client connection every part of the engine shares, and how it talks to the server.

* :meth:`Connection.retrying` runs an operation and retries transient failures (no leader,
  reconnecting) for ``RETRY_SECONDS``, then raises :class:`BrokerUnavailableError`. nats-py
  reconnects forever; on a reconnect the requests in flight are asked again at once.
* :meth:`Connection.request_pub` sends a request (a JetStream publish, a handoff) whose answer
  comes to this connection's own inbox (``requests``, keyed ``P<n>``), so several can be in
  flight at once (pipelining); :meth:`Connection.publish` is a JetStream publish with
  bounded retries (``retry_seconds``). Each publish carries a ``Nats-Msg-Id``, so a publish
  retried after a lost acknowledgement (leader change, reconnect) is stored once.
* **Outcomes**: a publish that gives up raises :class:`PublishOutcomeUnknownError` (a
  :class:`BrokerUnavailableError`) when some attempt left this process (handed to the
  client, which writes it, or holds it in its reconnect buffer and writes it once
  reconnected) and no acknowledgement came: it may be stored, now or after the reconnect.
  Only a publish no attempt of which left (the client refused it: closed, or its reconnect
  buffer full) raises plain :class:`BrokerUnavailableError`: it is certainly not stored.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from typing import Any, Awaitable, Callable, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ...errors import (
    BrokerClosedError,
    BrokerError,
    BrokerUnavailableError,
    MessagingError,
    PublishOutcomeUnknownError,
)
from .headers import STATUS
from .subjects import Subjects
from .translate import caused_by, translate

__all__ = ["REQUEST_TIMEOUT", "RETRY_SECONDS", "Connection", "RequestHandle"]

_T = TypeVar("_T")

#: Seconds a publish/ack/API call is retried while the server is unavailable.
RETRY_SECONDS = 30.0
#: Timeout of one request to the server.
REQUEST_TIMEOUT = 5.0

#: What :meth:`Connection.request_pub` returns: (inbox key, answer future, timeout timer).
RequestHandle = tuple[str, "asyncio.Future[Msg]", asyncio.TimerHandle]


class _Translate:
    """``with conn.errors(op):`` -- raise our error from a nats-py one."""

    __slots__ = ("conn", "op")

    def __init__(self, conn: Connection, op: str) -> None:
        self.conn = conn
        self.op = op

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        ours = translate(self.op, exc, closed=self.conn.closed)
        if ours is not None:
            raise ours from exc


class Connection:
    """A nats-py client with its JetStream context, this engine's inbox and open state."""

    def __init__(
        self, nc: NatsClient, subjects: Subjects, *, retry_seconds: float = RETRY_SECONDS
    ) -> None:
        self.nc = nc
        #: how long a publish is retried before it gives up (see the module docs)
        self.retry_seconds = float(retry_seconds)
        self.js = nc.jetstream(timeout=REQUEST_TIMEOUT)
        self.subjects = subjects
        #: closing: no handoff is taken any more; closed: every operation raises
        self.closing = False
        self.closed = False
        #: everything addressed to this connection goes to ``<inbox_prefix><key>``
        self.inbox_prefix = f"_INBOX.aos{os.urandom(8).hex()}."
        #: requests whose answer comes to the inbox (``P<n>``)
        self.requests: dict[str, asyncio.Future[Msg]] = {}
        self._request_ids = itertools.count()
        self._reconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: called after every reconnect, once the requests in flight were failed
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []

    # ------------------------------------------------------------------ errors
    def check_open(self) -> None:
        """Raise :class:`BrokerClosedError` once the broker is closed."""
        if self.closed:
            raise BrokerClosedError("the NATS broker is closed")

    def errors(self, op: str) -> _Translate:
        """Context manager: nats-py errors raised inside the block become ours."""
        return _Translate(self, op)

    def translate(self, op: str, exc: BaseException) -> MessagingError | None:
        """Our error for a nats-py (or connection) error; None for anything else."""
        return translate(op, exc, closed=self.closed)

    async def retrying(
        self, op: str, fn: Callable[[], Awaitable[_T]], *, budget: float = RETRY_SECONDS
    ) -> _T:
        """Run ``fn``; retry transient failures (no leader, reconnecting) for ``budget`` s."""
        deadline = time.monotonic() + budget
        delay = 0.05
        task = asyncio.current_task()
        assert task is not None
        while True:
            self.check_open()
            # A reconnect loses requests in flight on the old socket: cancel this attempt
            # when it happens and ask again at once (cheaper than racing a second task).
            state = {"active": True, "interrupted": False}

            def on_reconnect(_: object, state: dict[str, bool] = state) -> None:
                if state["active"]:
                    state["interrupted"] = True
                    task.cancel()

            reconnected = self._reconnected
            reconnected.add_done_callback(on_reconnect)
            try:
                with self.errors(op):
                    return await fn()
            except asyncio.CancelledError:
                if not state["interrupted"]:
                    raise
                task.uncancel()
                if time.monotonic() > deadline:
                    raise BrokerUnavailableError(f"NATS {op}: interrupted by reconnects") from None
                continue
            except BrokerUnavailableError:
                if self.closed or time.monotonic() + delay > deadline:
                    raise
            finally:
                state["active"] = False
                reconnected.remove_done_callback(on_reconnect)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def reconnected(self) -> None:
        """After a reconnect: interrupt what waits on the old socket, then the hooks."""
        waiter, self._reconnected = self._reconnected, asyncio.get_running_loop().create_future()
        if not waiter.done():
            waiter.set_result(None)
        self.fail_requests(nats.errors.ConnectionReconnectingError())
        for hook in self.on_reconnect:
            await hook()

    def fail_requests(self, exc: Exception) -> None:
        """Fail every request waiting for its answer with ``exc``."""
        for future in self.requests.values():
            if not future.done():
                future.set_exception(exc)

    # ------------------------------------------------------------------ requests
    async def request_pub(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        timeout: float = REQUEST_TIMEOUT,
    ) -> RequestHandle:
        """Send one request (a JetStream publish, a handoff) whose answer comes to the inbox;
        return a handle for :meth:`pub_result` (so several can be in flight: pipelining)."""
        key = f"P{next(self._request_ids)}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        future.add_done_callback(_retrieve)  # never "exception was never retrieved"
        self.requests[key] = future
        try:
            await self.nc.publish(subject, payload, reply=self.inbox_prefix + key, headers=headers)
        except BaseException:
            self.requests.pop(key, None)
            raise
        timer = loop.call_later(timeout, _expire_future, future)
        return key, future, timer

    async def answer(self, handle: RequestHandle) -> Msg:
        """Wait for the answer of :meth:`request_pub` (``nats.errors.TimeoutError`` when
        none came in time)."""
        key, future, timer = handle
        try:
            return await future
        finally:
            timer.cancel()
            self.requests.pop(key, None)

    async def pub_result(self, handle: RequestHandle) -> tuple[int, bool]:
        """Wait for the answer of a JetStream publish: (stream seq, duplicate)."""
        key, future, timer = handle
        try:
            answer = await future
        finally:
            timer.cancel()
            self.requests.pop(key, None)
        if not answer.data:
            status = (answer.headers or {}).get(STATUS, "")
            if status == "503":
                raise nats.js.errors.NoStreamResponseError()
            raise nats.js.errors.APIError(code=int(status or 500), description=str(answer.headers))
        resp = json.loads(answer.data)
        error = resp.get("error")
        if error is not None:
            raise nats.js.errors.APIError.from_error(error)
        return int(resp["seq"]), bool(resp.get("duplicate"))

    @property
    def attempt_timeout(self) -> float:
        """How long one publish attempt waits for its acknowledgement."""
        return min(REQUEST_TIMEOUT, self.retry_seconds)

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        *,
        message_id: str | None = None,
    ) -> tuple[int, bool, int]:
        """JetStream publish with bounded retries: (stream seq, duplicate, attempt number).
        Gives up with :class:`PublishOutcomeUnknownError` (naming ``message_id``) or
        :class:`BrokerUnavailableError` (see the module docs)."""
        try:
            handle = await self.request_pub(subject, payload, headers, self.attempt_timeout)
        except Exception as exc:
            return await self.publish_again(
                subject, payload, headers, exc, left=False, message_id=message_id
            )
        try:
            seq, duplicate = await self.pub_result(handle)
            return seq, duplicate, 1
        except Exception as exc:
            return await self.publish_again(
                subject, payload, headers, exc, left=True, message_id=message_id
            )

    async def publish_again(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        first: Exception,
        *,
        left: bool,
        message_id: str | None = None,
    ) -> tuple[int, bool, int]:
        """The first attempt failed with ``first`` (``left``: after it was handed to the
        client): retry transient failures (the message id makes a retry of a publish that
        did land a duplicate, not a second copy), for ``retry_seconds``."""
        ours = self.translate("publish", first)
        if ours is None:
            raise first
        if self.closed or not isinstance(ours, BrokerUnavailableError):
            raise ours from first
        attempt = 1
        sent = [left]

        async def once() -> tuple[int, bool]:
            nonlocal attempt
            attempt += 1
            handle = await self.request_pub(subject, payload, headers, self.attempt_timeout)
            sent[0] = True
            return await self.pub_result(handle)

        try:
            seq, duplicate = await self.retrying("publish", once, budget=self.retry_seconds)
        except BrokerUnavailableError as exc:
            if sent[0] and not isinstance(exc, PublishOutcomeUnknownError):
                named = "" if message_id is None else f" of {message_id!r}"
                raise PublishOutcomeUnknownError(
                    f"NATS publish{named}: sent, but no acknowledgement came within"
                    f" {self.retry_seconds:g} s; it may be stored (publishing again with the"
                    " same id is deduplicated)",
                    message_id,
                ) from exc
            raise
        return seq, duplicate, attempt

    # ------------------------------------------------------------------ stream API
    async def live(self, stream: str, seq: int) -> bool:
        """Whether message ``seq`` is still in ``stream``."""
        try:
            with self.errors("get message"):
                await self.js.get_msg(stream, seq=seq)
            return True
        except BrokerError as exc:
            if caused_by(exc, nats.js.errors.NotFoundError):
                return False
            raise

    async def purge(self, stream: str, subject: str) -> int:
        """Delete the messages of ``subject`` from ``stream``; return how many."""

        async def once() -> int:
            resp = await self.nc.request(
                f"$JS.API.STREAM.PURGE.{stream}",
                json.dumps({"filter": subject}).encode(),
                timeout=REQUEST_TIMEOUT,
            )
            data = json.loads(resp.data)
            if "error" in data:
                raise nats.js.errors.APIError.from_error(data["error"])
            return int(data.get("purged", 0))

        return await self.retrying("purge", once)

    async def ask_subject_counts(self, stream: str, subjects: str) -> RequestHandle:
        """Send ``STREAM.INFO`` for the subjects of ``stream`` matching ``subjects`` and
        return at once; :meth:`counted` gives the answer (pipelined :meth:`subject_counts`)."""
        payload = json.dumps({"subjects_filter": subjects}).encode()
        return await self.request_pub(f"$JS.API.STREAM.INFO.{stream}", payload, {})

    async def counted(self, handle: RequestHandle) -> dict[str, int]:
        """Messages per subject, from the answer to :meth:`ask_subject_counts`."""
        answer = await self.answer(handle)
        data = json.loads(answer.data or b"{}")
        error = data.get("error")
        if error is not None:
            raise nats.js.errors.APIError.from_error(error)
        subjects = (data.get("state") or {}).get("subjects") or {}
        return {str(k): int(v) for k, v in subjects.items()}

    async def subject_counts(self, stream: str, subjects: str) -> dict[str, int]:
        """Messages per subject of ``stream`` matching ``subjects``."""
        info = await self.retrying(
            "stream info", lambda: self.js.stream_info(stream, subjects_filter=subjects)
        )
        return {str(k): int(v) for k, v in (info.state.subjects or {}).items()}


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _expire_future(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())
