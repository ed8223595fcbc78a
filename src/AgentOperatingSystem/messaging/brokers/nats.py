"""The distributed engine: NATS JetStream (one server or a cluster).

URL: ``nats://host:4222``, or a comma list for a cluster (``nats://h1:4222,nats://h2:4222`` or
``nats://h1:4222,h2:4222``), with an optional query ``?namespace=aos&replicas=3``.

Layout in JetStream (``<ns>`` is the namespace, default ``aos``)
-----------------------------------------------------------------
* Stream ``<ns>_Q`` (work-queue retention, subjects ``<ns>.q.>``, ``duplicate_window`` =
  ``dedup_window``) holds every queue. A queue name (any string: ``"ceo_agent"``,
  ``"_reply.abc"``, unicode, dots, spaces) becomes a subject token ``Q<base32>``, and a
  message lives on ``<ns>.q.<token>.<priority>`` with two headers: ``Nats-Msg-Id`` and
  ``Aos`` (priority, enqueued/available/expiry times, message id).
* One durable pull consumer per (queue, priority), filtered on that subject. ``receive``
  drains priority 0 first, then 1..4, FIFO within a priority. Pull requests are ``no_wait``
  and ask for exactly the number of messages still wanted, so a receive never locks more than
  ``max_messages`` (no lingering pull request can grab messages later). A priority found
  empty is skipped for ``EMPTY_HINT_SECONDS`` unless a publish or release to it is seen;
  a consumer that does not answer (its leader is moving) is skipped with a backoff, so the
  other priorities keep flowing.
* Core subject ``<ns>.n.<token>`` carries a one-byte "priority p has news" notice after every
  publish or immediate release, so ``wait`` in any process wakes at once.
* Stream ``<ns>_DLQ`` (limits retention, subjects ``<ns>.dlq.>``) holds dead letters, one
  subject per queue; metadata travels in headers.
* Key-value buckets: ``<ns>_bind`` (topic bindings), ``<ns>_done`` (exactly-once processed
  keys), ``<ns>_dedup`` (``dedup_key`` records), ``<ns>_meta`` (per-message ``last_error``
  and delay bookkeeping, only for messages that have them).

Semantics and their limits (documented honestly)
------------------------------------------------
* **Locks** are the consumer's ``ack_wait``. ``receive(lock_seconds=...)`` updates the
  consumer's ``ack_wait`` when it differs (so processes should agree on one value), and
  ``renew`` sends ``+WPI`` (``in_progress``), which restarts the lock for ``ack_wait``. The
  engine also keeps each lock's deadline on its :class:`Clock`; a settlement after that
  deadline returns False (lock lost), and ``receive`` hands a lock that expired on the clock
  back to the server at once (so a :class:`ManualClock` drives lock expiry in tests).
* **ack** is a pipelined double ack: the acks of one consumer are sent together and the last
  asks for a confirmation (the server handles a consumer's acks in order). ``ack`` returns
  once they are sent (True: the lock was still held); the confirmations are collected before
  ``depth``/``queues``/``delete_queue`` answer and at ``close``, and acks that stay
  unconfirmed are sent again (bounded; what the server never got is redelivered).
* **release** is a confirmed ``nak(delay)``: the delay runs on the server's real clock.
  ``error`` is kept in the meta bucket and comes back as ``Delivery.last_error``.
* **attempts** is JetStream's ``num_delivered``, minus redeliveries the engine itself caused to
  honour a future ``available_at`` (counted in the meta bucket).
* **Delayed messages** (``available_at`` in the future) are stored at once; a receive that
  meets one too early hands it back with ``nak(delay=remaining)`` and does not return it.
* **Message ids**: each publish carries ``Nats-Msg-Id = <queue token>:<message id>``, so a
  publish retried after a lost acknowledgement (leader change, reconnect) is stored once.
  When the server reports a duplicate on the first attempt, the engine looks up the original:
  still in the queue -> ``DuplicateMessageError``; already consumed -> stored again under a
  fresh id. A concurrent send of the same id from two processes is not detected (best effort).
* **dedup_key** is checked against the ``<ns>_dedup`` bucket with a compare-and-set on the
  engine's clock, scoped per queue: a key sent to the same queue within ``dedup_window``
  seconds is not enqueued (False). Records live at most the engine's ``dedup_window``.
* **max_depth** is checked (stream subject counts) before publishing; far below the limit a
  count less than ``DEPTH_CACHE_SECONDS`` old (plus this broker's sends since) is trusted,
  near it the depth is measured. This is not atomic across processes: concurrent publishers
  can overshoot by their in-flight sends.
* **send** of several envelopes is not one transaction on NATS 2.9 (no atomic batch): checks
  run first, then the publishes (pipelined); a failure part-way leaves the others enqueued.
* **ack(processed_key=..., outbox=...)** runs in this order: publish the outbox (each with
  ``Nats-Msg-Id`` derived from the key and its index, so a retry is deduplicated by the
  server), record the key, then ack. It is not one atomic transaction: a crash between the
  steps redelivers the message, and the server's duplicate window (``dedup_window``) keeps the
  outbox from being enqueued twice within that window.
* **Handoff** (``hand_off``, used by ``request()``): a request whose recipient has a consumer
  that is live right now (in this process, or in another one through the core subject
  ``<ns>.h.<token>``, queue group ``<ns>.h``) is handed to it directly: nothing is stored and
  the consumer confirms that it took it. A consumer takes a handoff only when its last receive
  found the queue empty and it received or waited within ``HANDOFF_ACTIVE_SECONDS`` (so a
  request does not overtake messages already queued, and a busy or gone consumer declines);
  otherwise the sender publishes the request the durable way. A handed-off message that fails
  goes to the durable queue (``release``, with its attempt counted in the ``Aos-Prior`` header
  and its error in ``Aos-Error``), to the dead-letter stream (``dead_letter``), or back to the
  queue at ``close`` or when its consumer has not picked it up within
  ``HANDOFF_GRACE_SECONDS``. Its one window of loss: a consumer process that dies while it
  holds a handed-off request; the requester, who is waiting, gets ``RequestTimeoutError``.
* **wait** listens to ``<ns>.n.<token>`` (the connection does not echo its own notices; this
  process wakes its waiters directly), and to local releases and lock deadlines.
* Streams are replicated ``replicas`` times. Publishes, acks and API calls that fail while a
  leader moves or the client reconnects are retried for a bounded time, then raise
  :class:`BrokerUnavailableError`. nats-py reconnects forever (``max_reconnect_attempts=-1``);
  on a reconnect the requests in flight are asked again at once and unconfirmed acks resent.
* Works with nats-server 2.9 and newer (no feature of 2.10+ is required).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence, TypeVar
from urllib.parse import quote, unquote

from ...config.urls import parse_nats_url
from ..clock import Clock
from ..errors import (
    BrokerClosedError,
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    DuplicateMessageError,
    InvalidMessageError,
    MessagingError,
    MissingExtraError,
    QueueFullError,
)
from ..policy import DEFAULT_OPTIONS
from .base import DeadLetter, Delivery, Envelope, SettlementRef

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js import api
    from nats.js.kv import KeyValue
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("NATS engine", "nats") from exc

__all__ = ["NatsBroker", "create_nats_broker", "parse_nats_url", "queue_token", "token_queue"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

PRIORITIES = (0, 1, 2, 3, 4)
DEFAULT_NAMESPACE = "aos"
#: Seconds a publish/ack/API call is retried while the server is unavailable.
RETRY_SECONDS = 30.0
#: Timeout of one request to the server.
REQUEST_TIMEOUT = 5.0
#: Seconds to wait for the answer to one pull request (no_wait: normally milliseconds).
FETCH_TIMEOUT = 1.0
#: A consumer that did not answer a pull (its leader is moving) is skipped this long at
#: first, doubling up to the maximum, so the other priorities are not held up.
UNRESPONSIVE_BACKOFF = (0.5, 4.0)
#: A durable consumer nobody pulls from for this long is removed by the server (its messages
#: stay in the stream; the next receive creates the consumer again).
CONSUMER_INACTIVE_THRESHOLD = 24 * 3600.0
#: How long a pull that found a priority empty lets receive skip it (see ``_Puller``).
EMPTY_HINT_SECONDS = 0.25
#: How long a measured queue depth is trusted by the ``max_depth`` check far below the limit.
DEPTH_CACHE_SECONDS = 0.5
#: Processed keys live at most this long whatever their ttl.
PROCESSED_MAX_AGE = 7 * 24 * 3600.0
#: Per-message bookkeeping (last error, delay redeliveries) lives at most this long.
META_MAX_AGE = 7 * 24 * 3600.0
#: A consumer takes handoffs for its queue only if it received from it or waited on it this
#: recently (seconds): one stuck in a long handler declines.
HANDOFF_ACTIVE_SECONDS = 0.5
#: Handoffs a consumer has not picked up after this long go to the durable queue.
HANDOFF_GRACE_SECONDS = 1.0
#: At most this many handoffs wait for one queue's consumer; more are declined.
HANDOFF_BACKLOG = 8
#: How long ``hand_off`` waits for a remote consumer to say whether it took the message.
HANDOFF_TIMEOUT = 1.0
#: A consumer that took a remote handoff answers within this long (at most half the
#: sender's wait): with the response when the handler was that quick, else with "taken".
HANDOFF_CONFIRM_SECONDS = 0.2
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Header names.
H_MSG_ID = "Nats-Msg-Id"
#: "<priority> <enqueued_at> <available_at|-> <expires_at|-> <quoted message id>": one header
#: (every header costs encoding and parsing on both sides).
H_INFO = "Aos"
H_QUEUE = "Aos-Queue"
H_REASON = "Aos-Reason"
H_ERROR = "Aos-Error"
H_ATTEMPTS = "Aos-Attempts"
H_DEAD_AT = "Aos-Dead-Lettered-At"
#: attempts a message had before it was stored (a handed-off request that failed once)
H_PRIOR = "Aos-Prior"
#: how long the sender of a handoff waits for its answer (seconds)
H_WAIT = "Aos-Wait"
_STATUS = "Status"
_DIGITS = [str(p).encode() for p in range(5)]

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
    ConnectionError,
)
# JetStream error codes that mean "no leader right now / try again".
_RETRY_ERR_CODES = {10008, 10076, 10077}
# Creating a stream: its name is taken (10058); its subjects overlap another's (10065).
_NAME_IN_USE = 10058
_SUBJECTS_OVERLAP = 10065
# How often an overlap is looked at again before it counts as another stream's subjects.
_OVERLAP_LOOKS = 5


@functools.lru_cache(maxsize=8192)
def queue_token(name: str) -> str:
    """Subject-safe, reversible token for a queue or topic name (``Q`` + base32, no padding)."""
    return "Q" + base64.b32encode(name.encode("utf-8")).decode("ascii").rstrip("=")


def token_queue(token: str) -> str | None:
    """Inverse of :func:`queue_token`; None for a token that is not one."""
    if not token.startswith("Q"):
        return None
    body = token[1:]
    try:
        return base64.b32decode(body + "=" * (-len(body) % 8)).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def _hash(value: str, length: int = 32) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length]


_PLAIN_RE = re.compile(r"[A-Za-z0-9_.~-]*")


def _hq(value: str) -> str:
    """Header-safe text without spaces (no CR/LF, reversible with ``unquote``)."""
    if _PLAIN_RE.fullmatch(value):
        return value
    return quote(value, safe="")


def _uq(value: str) -> str:
    return unquote(value) if "%" in value else value


@dataclass(slots=True)
class _Info:
    """What travels in the ``Aos`` header of a queued message."""

    priority: int
    enqueued_at: float
    available_at: float
    expires_at: float | None
    message_id: str

    def encode(self) -> str:
        available = repr(self.available_at) if self.available_at else "-"
        expires = "-" if self.expires_at is None else repr(self.expires_at)
        return f"{self.priority} {self.enqueued_at!r} {available} {expires} {_hq(self.message_id)}"

    @classmethod
    def decode(cls, value: str | None) -> _Info:
        parts = (value or "").split(" ")
        if len(parts) != 5:
            return cls(2, 0.0, 0.0, None, "")
        prio, enq, avail, exp, mid = parts
        return cls(
            int(prio) if prio.isdigit() else 2,
            _fnum(enq, 0.0) or 0.0,
            0.0 if avail == "-" else (_fnum(avail, 0.0) or 0.0),
            None if exp == "-" else _fnum(exp),
            _uq(mid),
        )


def _fnum(value: str | None, default: float | None = None) -> float | None:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        return default


@dataclass(slots=True)
class _Puller:
    """One durable pull consumer (queue, priority) and the buffer its deliveries land in."""

    name: str
    queue: str
    priority: int
    subject: str
    ack_wait: float
    next_subject: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    missing: bool = False
    #: deliveries that arrived while no fetch was collecting (a late answer): used next time
    stash: deque[tuple[float, Msg]] = field(default_factory=deque)
    #: the fetch in progress: where deliveries go, how many it wants, and its completion
    collector: list[Msg] | None = None
    want: int = 0
    done: asyncio.Future[str] | None = None
    #: after a pull found nothing, skip this priority until ``empty_until`` unless
    #: something may have become available (``next_event``: a publish seen, a release or a
    #: lock deadline of this process). Events of other processes that are not publishes
    #: (their lock expiries, delayed redeliveries) are seen at most EMPTY_HINT_SECONDS late.
    empty_until: float = 0.0
    next_event: float = float("inf")
    #: skipped until then because a pull got no answer; ``backoff`` grows while that lasts
    unresponsive_until: float = 0.0
    backoff: float = 0.0

    def may_have(self, at: float = 0.0) -> None:
        """Something may be available from ``at`` (monotonic; 0 = now)."""
        if at < self.next_event:
            self.next_event = at

    def skip(self, now: float) -> bool:
        if now < self.unresponsive_until:
            return True
        return now < self.empty_until and now < self.next_event


@dataclass(slots=True)
class _Held:
    """A delivery this broker handed out and has not settled."""

    msg: Msg
    queue: str
    message_id: str
    puller: _Puller
    seq: int
    deadline: float  # on the engine clock
    real_deadline: float  # time.monotonic(): when the server's ack_wait runs out
    has_meta: bool


@dataclass(slots=True)
class _Meta:
    phantom: int = 0
    error: str | None = None

    def encode(self) -> bytes:
        return json.dumps({"p": self.phantom, "e": self.error}).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> _Meta:
        try:
            raw = json.loads(data or b"{}")
            return cls(int(raw.get("p", 0)), raw.get("e"))
        except (ValueError, TypeError, AttributeError):
            return cls()


@dataclass(slots=True)
class _PendingAck:
    """An ack sent with a reply subject whose confirmation has not arrived yet."""

    msgs: list[Msg]  # acks of one consumer, in order; the last one carries the reply
    payload: bytes
    future: asyncio.Future[None]
    sent_at: float


class _Translate:
    """``with broker._errors(op):`` -- raise our error from a nats-py one."""

    __slots__ = ("broker", "op")

    def __init__(self, broker: NatsBroker, op: str) -> None:
        self.broker = broker
        self.op = op

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            return
        ours = self.broker._translate(self.op, exc)
        if ours is not None:
            raise ours from exc


@dataclass(slots=True)
class _Handoff:
    """A message handed to this process's consumer of ``queue`` (see ``hand_off``)."""

    queue: str
    body: bytes
    info: _Info
    received: float  # time.monotonic()
    token: str = ""
    #: where the sender waits for the answer (remote handoffs): the response itself, or
    #: ``1`` ("taken; the answer comes the usual way") once ``confirm`` fires
    reply: str | None = None
    confirm: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Watch:
    """Core subscriptions of a queue: publish notices that wake ``wait``, and handoffs."""

    event: asyncio.Event
    sub: Any
    wake_at: float = float("inf")  # time.monotonic() of the next local wake-up
    handoff_sub: Any = None
    waiters: int = 0  # waits in progress on this queue
    active_at: float = 0.0  # time.monotonic() of the last receive or wait on this queue
    drained: bool = False  # the last receive found nothing more in the queue
    handoffs: deque[_Handoff] = field(default_factory=deque)  # taken, not yet received


class NatsBroker:
    """The :class:`~.base.Broker` seam on NATS JetStream; see :func:`create_nats_broker`."""

    needs_bytes: bool = True

    def __init__(
        self,
        nc: NatsClient,
        *,
        clock: Clock,
        namespace: str,
        replicas: int,
        dedup_window: float,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=REQUEST_TIMEOUT)
        self._clock = clock
        self.namespace = namespace
        self.replicas = replicas
        self.dedup_window = float(dedup_window)
        self._q_stream = f"{namespace}_Q"
        self._dlq_stream = f"{namespace}_DLQ"
        self._closed = False
        self._closing = False
        self._pullers: dict[str, _Puller] = {}  # consumer name -> puller
        self._queues: dict[str, list[_Puller]] = {}  # queue -> pullers by priority
        self._queue_locks: dict[str, asyncio.Lock] = {}
        self._held: dict[str, _Held] = {}
        self._meta_cache: OrderedDict[int, _Meta] = OrderedDict()
        self._watches: dict[str, _Watch] = {}
        self._inbox_prefix = ""
        self._inbox_sub: Any = None
        self._kv_bind: KeyValue | None = None
        self._kv_done: KeyValue | None = None
        self._kv_dedup: KeyValue | None = None
        self._kv_meta: KeyValue | None = None
        self._reconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks: dict[str, _PendingAck] = {}
        self._requests: dict[str, asyncio.Future[Msg]] = {}
        self._request_ids = itertools.count()
        self._ack_ids = itertools.count()
        self._depth_cache: dict[str, tuple[float, int]] = {}
        self._handed: dict[str, _Handoff] = {}  # handed-off deliveries not yet settled
        self._awaiting: dict[str, _Handoff] = {}  # message id -> handoff whose sender waits
        self._confirms: set[asyncio.Task[None]] = set()
        self._direct_listeners: dict[str, Callable[[bytes], Awaitable[bool]]] = {}
        self._handoff_ids = itertools.count()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        #: seconds before an unclaimed handoff goes to the durable queue (tests shorten it)
        self.handoff_grace = HANDOFF_GRACE_SECONDS
        #: handoffs this broker's consumers took (from this process or others)
        self.handoffs_taken = 0

    # ------------------------------------------------------------------ setup / teardown
    async def _setup(self) -> None:
        ns = self.namespace
        self._inbox_prefix = f"_INBOX.aos{os.urandom(8).hex()}."
        self._inbox_sub = await self._nc.subscribe(self._inbox_prefix + "*", cb=self._on_inbox)
        q_stream = self._ensure_stream(
            api.StreamConfig(
                name=self._q_stream,
                subjects=[f"{ns}.q.>"],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=max(self.dedup_window, 1.0),
            )
        )
        dlq_stream = self._ensure_stream(
            api.StreamConfig(
                name=self._dlq_stream,
                subjects=[f"{ns}.dlq.>"],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=120.0,
            )
        )
        # independent assets: create them concurrently (each is a raft group in a cluster)
        results = await asyncio.gather(
            q_stream,
            dlq_stream,
            self._ensure_kv(f"{ns}_bind", None),
            self._ensure_kv(f"{ns}_done", PROCESSED_MAX_AGE),
            self._ensure_kv(f"{ns}_dedup", max(self.dedup_window, 1.0)),
            self._ensure_kv(f"{ns}_meta", META_MAX_AGE),
            return_exceptions=True,
        )
        for outcome in results:
            if isinstance(outcome, BaseException):
                raise outcome
        self._kv_bind, self._kv_done, self._kv_dedup, self._kv_meta = results[2:]  # type: ignore[assignment]

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        name = str(config.name)

        async def existing() -> None:
            info = await self._js.stream_info(name)
            if info.config.retention != config.retention:
                raise ConfigurationError(
                    f"stream {name} exists with retention {info.config.retention}"
                )

        async def create() -> None:
            await self._create_or_take(name, lambda: self._js.add_stream(config), existing)

        await self._retrying("create stream", create)

    async def _ensure_kv(self, bucket: str, ttl: float | None) -> KeyValue:
        async def create() -> KeyValue:
            return await self._create_or_take(
                f"KV_{bucket}",
                lambda: self._js.create_key_value(
                    bucket=bucket, history=1, ttl=ttl, replicas=self.replicas
                ),
                lambda: self._js.key_value(bucket),
            )

        return await self._retrying("create bucket", create)

    @staticmethod
    async def _create_or_take(
        name: str, add: Callable[[], Awaitable[_T]], existing: Callable[[], Awaitable[_T]]
    ) -> _T:
        """Create stream ``name`` with ``add``, or take the one that exists with ``existing``.

        Several processes start on one namespace at once, so the server may be creating the
        same stream for another of them: it then answers "name in use" (10058) or, while the
        other create is half done, "subjects overlap" (10065). Only an overlap that outlasts
        a few looks at the stream (none of that name appears) is another stream's subjects."""
        for attempt in range(_OVERLAP_LOOKS):
            try:
                return await add()
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code == _NAME_IN_USE:
                    return await existing()
                if exc.err_code != _SUBJECTS_OVERLAP:
                    raise
            try:
                return await existing()
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.02 * (attempt + 1))
        raise ConfigurationError(f"stream {name}: its subjects overlap with another stream's")

    async def close(self) -> None:
        """Hand unsettled locks back, close the connection; later calls raise BrokerClosedError."""
        if self._closed or self._closing:
            return
        self._closing = True  # from now on no handoff is taken
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        if self._sweep_task is not None:
            with contextlib.suppress(Exception):
                await self._sweep_task
        await self._requeue_handoffs()
        if self._acks:  # let the last acks be confirmed (bounded: the server may be gone)
            with contextlib.suppress(Exception):
                await asyncio.wait([p.future for p in self._acks.values()], timeout=2.0)
        self._closed = True
        for future in self._requests.values():  # fail what waits on this connection now
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())
        for puller in self._pullers.values():
            if puller.done is not None and not puller.done.done():
                puller.done.set_result("closed")
        held, self._held = list(self._held.values()), {}
        now = time.monotonic()
        for h in held:
            if now < h.real_deadline:
                with contextlib.suppress(Exception):
                    await h.msg.nak()
        for watch in self._watches.values():
            watch.event.set()
        self._watches.clear()
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await self._nc.close()

    # -- direct delivery (optional capability; see brokers/base.py) ------------------------

    async def listen_direct(self, queue: str, handler: Callable[[bytes], Awaitable[bool]]) -> None:
        """Take envelopes sent to ``queue`` with :meth:`send_direct` while this process runs:
        ``handler(body)`` says whether it took the message (its answer goes back to the
        sender). Used for responses to a requester that is waiting right now."""
        self._check_open()

        async def on_message(msg: Msg) -> None:
            taken = await self._take_direct(handler, queue, msg.data)
            if msg.reply:
                with contextlib.suppress(Exception):
                    await msg.respond(b"1" if taken else b"0")

        with self._errors("listen"):
            await self._nc.subscribe(f"{self.namespace}.d.{queue_token(queue)}", cb=on_message)
        self._direct_listeners[queue] = handler

    @staticmethod
    async def _take_direct(
        handler: Callable[[bytes], Awaitable[bool]], queue: str, body: bytes
    ) -> bool:
        try:
            return await handler(body)
        except Exception:
            _log.exception("direct delivery handler for %s failed", queue)
            return False

    async def send_direct(
        self, env: Envelope, *, reply_for: str | None = None, timeout: float = 2.0
    ) -> bool:
        """Hand ``env`` straight to a live :meth:`listen_direct` listener of its queue (core
        NATS, nothing stored). ``reply_for``: the id of the handed-off request ``env``
        answers; while its sender still waits on the handoff, the answer goes there. True
        only when the listener confirmed that it took the message (or the handoff's sender
        got it); on False the caller must fall back to :meth:`send`."""
        self._check_open()
        body = env.body
        if body is None:
            return False
        if reply_for is not None:
            handoff = self._awaiting.pop(reply_for, None)
            if handoff is not None:
                if handoff.confirm is not None:
                    handoff.confirm.cancel()
                reply = handoff.reply
                handoff.reply = None
                if reply is not None and not self._closed:
                    info = _Info(self._priority(env.priority), 0.0, 0.0, None, env.message_id)
                    try:
                        await self._nc.publish(reply, body, headers={H_INFO: info.encode()})
                        # let the client's flusher write it now, before the caller goes on
                        # to settle and receive (the sender is waiting for exactly this)
                        await asyncio.sleep(0)
                        return True
                    except Exception:  # not sent: the sender hears nothing and stores it
                        _log.debug("answer to handoff %s not sent", reply_for, exc_info=True)
        try:
            answer = await self._nc.request(
                f"{self.namespace}.d.{queue_token(env.queue)}", body, timeout=timeout
            )
        except Exception:  # no responders, timeout, reconnecting: use the durable path
            return False
        return bool(answer.data == b"1")

    async def hand_off(
        self, env: Envelope, *, reply_queue: str | None = None, wait: float = HANDOFF_TIMEOUT
    ) -> bool:
        """Hand ``env`` straight to a consumer of its queue that is live right now (this
        process first, then any other through core NATS); nothing is stored. True when a
        consumer took it; on False the caller must :meth:`send` it. Messages with a
        ``dedup_key`` or a delivery time are never handed off. See the module docs.

        A remote consumer answers within ``wait`` seconds: declined, taken, or (when its
        handler was quick) with the response, which goes to the :meth:`listen_direct`
        listener of ``reply_queue`` (stored in ``reply_queue`` when the listener refuses)."""
        self._check_open()
        body = env.body
        if body is None or env.dedup_key is not None or env.available_at:
            return False
        info = _Info(
            self._priority(env.priority),
            self._clock.now(),
            0.0,
            None if env.expires_at is None else float(env.expires_at),
            env.message_id,
        )
        if self._take_handoff(env.queue, body, info):
            return True
        wait = max(0.001, min(float(wait), HANDOFF_TIMEOUT))
        try:  # through this broker's inbox: cheaper than nc.request
            key, future, timer = await self._request_pub(
                f"{self.namespace}.h.{queue_token(env.queue)}",
                body,
                {H_INFO: info.encode(), H_WAIT: repr(wait)},
                wait,
            )
            try:
                answer: Msg = await future
            finally:
                timer.cancel()
                self._requests.pop(key, None)
        except Exception:  # timeout, reconnecting: the durable path
            return False
        headers = answer.headers or {}
        if H_INFO not in headers:  # "0", "1", or a status (503: no consumer anywhere)
            return bool(answer.data == b"1")
        # the consumer answered at once: the response itself
        if reply_queue is None:
            return True  # the caller asked for no answer (the bus always names its queue)
        handler = self._direct_listeners.get(reply_queue)
        if handler is None or not await self._take_direct(handler, reply_queue, answer.data):
            rinfo = _Info.decode(headers.get(H_INFO))  # refused or nobody listens: store it
            await self.send([Envelope(reply_queue, rinfo.message_id, rinfo.priority, answer.data)])
        return True

    def _take_handoff(
        self, queue: str, body: bytes, info: _Info, reply: str | None = None, wait: float = 0.0
    ) -> bool:
        """Take a handed-off message for this process's consumer of ``queue`` if it is live,
        idle and caught up (see the module docs); wake it."""
        if self._closing or self._closed or not info.message_id:
            return False
        watch = self._watches.get(queue)
        if watch is None or not watch.drained or len(watch.handoffs) >= HANDOFF_BACKLOG:
            return False
        now = time.monotonic()
        if watch.waiters == 0 and now - watch.active_at > HANDOFF_ACTIVE_SECONDS:
            return False
        if info.available_at > self._clock.now():
            return False
        handoff = _Handoff(queue, body, info, now)
        if reply:
            handoff.reply = reply
            self._awaiting[info.message_id] = handoff
            handoff.confirm = asyncio.get_running_loop().call_later(
                min(HANDOFF_CONFIRM_SECONDS, wait / 2), self._confirm_later, handoff
            )
        watch.handoffs.append(handoff)
        watch.event.set()
        self.handoffs_taken += 1
        if self._sweep_timer is None and self._sweep_task is None:
            self._sweep_timer = asyncio.get_running_loop().call_later(
                self.handoff_grace, self._start_sweep
            )
        return True

    def _confirm_later(self, handoff: _Handoff) -> None:
        task = asyncio.get_running_loop().create_task(self._confirm(handoff))
        self._confirms.add(task)
        task.add_done_callback(self._confirms.discard)

    async def _confirm(self, handoff: _Handoff) -> None:
        """Tell a handoff's sender "taken; the answer comes the usual way" (once)."""
        if handoff.confirm is not None:
            handoff.confirm.cancel()
            handoff.confirm = None
        if self._awaiting.get(handoff.info.message_id) is handoff:
            del self._awaiting[handoff.info.message_id]
        reply, handoff.reply = handoff.reply, None
        if reply is not None and not self._closed:
            with contextlib.suppress(Exception):
                await self._nc.publish(reply, b"1")

    def _start_sweep(self) -> None:
        self._sweep_timer = None
        if not self._closing:
            self._sweep_task = asyncio.create_task(self._sweep(), name="aos-nats-handoff-sweep")

    async def _sweep(self) -> None:
        """Send handoffs no consumer picked up within ``handoff_grace`` to the durable queue."""
        try:
            cutoff = time.monotonic() - self.handoff_grace
            for watch in list(self._watches.values()):
                while watch.handoffs and watch.handoffs[0].received <= cutoff:
                    handoff = watch.handoffs.popleft()
                    try:
                        await self._requeue(handoff, prior=0)
                    except MessagingError:
                        watch.handoffs.appendleft(handoff)  # kept; tried again later
                        _log.warning("could not queue an unclaimed handoff; retrying later")
                        break
            left = any(w.handoffs for w in self._watches.values())
        finally:
            self._sweep_task = None
        if left and not self._closing:
            self._sweep_timer = asyncio.get_running_loop().call_later(
                self.handoff_grace, self._start_sweep
            )

    async def _requeue(
        self, handoff: _Handoff, *, prior: int, delay: float = 0.0, error: str | None = None
    ) -> None:
        """Store a handed-off message in its queue (the durable way), ``prior`` attempts
        already made, available after ``delay`` seconds; then tell its sender, if it still
        waits, that the answer comes the usual way."""
        old = handoff.info
        available = self._clock.now() + delay if delay > 0 else old.available_at
        info = _Info(old.priority, old.enqueued_at, available, old.expires_at, old.message_id)
        headers = {
            H_MSG_ID: f"ho:{queue_token(handoff.queue)}:{old.message_id}:{prior}",
            H_INFO: info.encode(),
        }
        if prior:
            headers[H_PRIOR] = str(prior)
        if error is not None:
            headers[H_ERROR] = _hq(error)
        await self._publish(self._subject(handoff.queue, old.priority), handoff.body, headers)
        self._count_sent(handoff.queue, 1)
        if delay > 0:
            self._schedule_wake(handoff.queue, delay, old.priority)
        else:
            await self._notify(handoff.queue, old.priority)
        await self._confirm(handoff)

    async def _requeue_handoffs(self) -> None:
        """At close: every handoff taken and not settled goes to the durable queue."""
        pending = list(self._handed.values())
        self._handed.clear()
        for watch in self._watches.values():
            pending += watch.handoffs
            watch.handoffs.clear()
        for handoff in pending:
            try:
                await self._requeue(handoff, prior=0)
            except Exception:
                _log.exception(
                    "could not queue handed-off message %s of %s at close",
                    handoff.info.message_id,
                    handoff.queue,
                )
        for handoff in list(self._awaiting.values()):  # settled, or not stored just now
            await self._confirm(handoff)
        if self._confirms:
            await asyncio.gather(*self._confirms, return_exceptions=True)

    def _handoff_delivery(self, handoff: _Handoff) -> Delivery:
        token = handoff.token = f"h{next(self._handoff_ids)}"
        self._handed[token] = handoff
        info = handoff.info
        return Delivery(
            queue=handoff.queue,
            message_id=info.message_id,
            token=token,
            attempts=1,
            priority=info.priority,
            enqueued_at=info.enqueued_at,
            expires_at=info.expires_at,
            body=handoff.body,
            message=None,
            options=DEFAULT_OPTIONS,
        )

    def _settle_handoff(
        self, queue: str, settlement: SettlementRef, *, pop: bool = True
    ) -> _Handoff | None:
        handoff = self._handed.get(settlement.token)
        if (
            handoff is None
            or handoff.queue != queue
            or handoff.info.message_id != settlement.message_id
        ):
            return None
        if pop:
            del self._handed[settlement.token]
        return handoff

    async def drop_namespace(self) -> None:
        """Delete every stream and bucket of this namespace (all queues, dead letters,
        bindings and records), then close. For tests and administration."""
        self._check_open()
        ns = self.namespace
        for stream in (
            self._q_stream,
            self._dlq_stream,
            f"KV_{ns}_bind",
            f"KV_{ns}_done",
            f"KV_{ns}_dedup",
            f"KV_{ns}_meta",
        ):
            try:
                with self._errors("delete stream"):
                    await self._js.delete_stream(stream)
            except BrokerError as exc:
                if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                    raise
        self._held.clear()
        await self.close()

    async def __aenter__(self) -> NatsBroker:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ error handling
    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosedError("the NATS broker is closed")

    def _errors(self, op: str) -> _Translate:
        """Context manager: nats-py errors raised inside the block become ours."""
        return _Translate(self, op)

    def _translate(self, op: str, exc: BaseException) -> MessagingError | None:
        """Our error for a nats-py (or connection) error; None for anything else."""
        if isinstance(exc, MessagingError) or not isinstance(exc, (Exception,)):
            return None
        if isinstance(exc, (nats.errors.Error, *_UNAVAILABLE)) and self._closed:
            return BrokerClosedError("the NATS broker is closed")
        if isinstance(exc, nats.errors.ConnectionClosedError):
            return BrokerUnavailableError(f"NATS {op}: connection closed")
        if isinstance(exc, nats.js.errors.APIError):
            if _retryable(exc):
                return BrokerUnavailableError(f"NATS {op}: {exc}")
            return BrokerError(f"NATS {op}: {exc}")
        if isinstance(exc, _UNAVAILABLE):
            return BrokerUnavailableError(f"NATS {op}: {type(exc).__name__} {exc}")
        if isinstance(exc, nats.errors.Error):
            return BrokerError(f"NATS {op}: {type(exc).__name__} {exc}")
        return None

    async def _retrying(
        self, op: str, fn: Callable[[], Awaitable[_T]], *, budget: float = RETRY_SECONDS
    ) -> _T:
        """Run ``fn``; retry transient failures (no leader, reconnecting) for ``budget`` s."""
        deadline = time.monotonic() + budget
        delay = 0.05
        task = asyncio.current_task()
        assert task is not None
        while True:
            self._check_open()
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
                with self._errors(op):
                    return await fn()
            except asyncio.CancelledError:
                if not state["interrupted"]:
                    raise
                task.uncancel()
                if time.monotonic() > deadline:
                    raise BrokerUnavailableError(f"NATS {op}: interrupted by reconnects") from None
                continue
            except BrokerUnavailableError:
                if self._closed or time.monotonic() + delay > deadline:
                    raise
            finally:
                state["active"] = False
                reconnected.remove_done_callback(on_reconnect)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _on_reconnected(self) -> None:
        """Wake everything that waits on the old connection; send unconfirmed acks again."""
        waiter, self._reconnected = self._reconnected, asyncio.get_running_loop().create_future()
        if not waiter.done():
            waiter.set_result(None)
        for puller in self._pullers.values():
            puller.may_have()
            puller.unresponsive_until = 0.0
            if puller.done is not None and not puller.done.done():
                puller.done.set_result("reconnect")
        for future in self._requests.values():
            if not future.done():
                future.set_exception(nats.errors.ConnectionReconnectingError())
        for watch in self._watches.values():
            watch.event.set()
        for key, pending in list(self._acks.items()):
            with contextlib.suppress(Exception):
                await self._publish_acks(key, pending)

    # ------------------------------------------------------------------ publishing
    def _subject(self, queue: str, priority: int) -> str:
        return f"{self.namespace}.q.{queue_token(queue)}.{priority}"

    def _dlq_subject(self, queue: str) -> str:
        return f"{self.namespace}.dlq.{queue_token(queue)}"

    @staticmethod
    def _priority(value: int) -> int:
        return min(max(int(value), 0), 4)

    def _headers(self, env: Envelope, enqueued_at: float, msg_id: str) -> dict[str, str]:
        info = _Info(
            self._priority(env.priority),
            enqueued_at,
            float(env.available_at or 0.0),
            None if env.expires_at is None else float(env.expires_at),
            env.message_id,
        )
        return {H_MSG_ID: msg_id, H_INFO: info.encode()}

    async def _notify(self, queue: str, priority: int) -> None:
        """Wake waiters on ``queue``: in this process directly, elsewhere by a tiny core
        message naming the priority (the connection does not echo it back to us)."""
        self._schedule_wake(queue, 0.0, priority)
        with contextlib.suppress(Exception):
            await self._nc.publish(f"{self.namespace}.n.{queue_token(queue)}", _DIGITS[priority])

    async def _request_pub(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        timeout: float = REQUEST_TIMEOUT,
    ) -> Any:
        """Send one request (a JetStream publish, a handoff) whose answer comes to this
        broker's inbox; return a handle (key, future, timer) for :meth:`_pub_result` (so
        several can be in flight: pipelining)."""
        key = f"P{next(self._request_ids)}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        future.add_done_callback(_retrieve)  # never "exception was never retrieved"
        self._requests[key] = future
        try:
            await self._nc.publish(
                subject, payload, reply=self._inbox_prefix + key, headers=headers
            )
        except BaseException:
            self._requests.pop(key, None)
            raise
        timer = loop.call_later(timeout, _expire_future, future)
        return key, future, timer

    async def _pub_result(self, handle: Any) -> tuple[int, bool]:
        """Wait for the answer of :meth:`_request_pub`: (stream seq, duplicate)."""
        key, future, timer = handle
        try:
            answer: Msg = await future
        finally:
            timer.cancel()
            self._requests.pop(key, None)
        if not answer.data:
            status = (answer.headers or {}).get(_STATUS, "")
            if status == "503":
                raise nats.js.errors.NoStreamResponseError()
            raise nats.js.errors.APIError(code=int(status or 500), description=str(answer.headers))
        resp = json.loads(answer.data)
        error = resp.get("error")
        if error is not None:
            raise nats.js.errors.APIError.from_error(error)
        return int(resp["seq"]), bool(resp.get("duplicate"))

    async def _js_publish(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> tuple[int, bool]:
        """One JetStream publish: (stream seq, duplicate)."""
        return await self._pub_result(await self._request_pub(subject, payload, headers))

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> tuple[int, bool, int]:
        """JetStream publish with bounded retries: (stream seq, duplicate, attempt number)."""
        try:
            seq, duplicate = await self._js_publish(subject, payload, headers)
            return seq, duplicate, 1
        except Exception as exc:
            return await self._publish_again(subject, payload, headers, exc)

    async def _publish_again(
        self, subject: str, payload: bytes, headers: dict[str, str], first: Exception
    ) -> tuple[int, bool, int]:
        """The first attempt failed with ``first``: retry transient failures (the message
        id makes a retry of a publish that did land a duplicate, not a second copy)."""
        ours = self._translate("publish", first)
        if ours is None:
            raise first
        if self._closed or not isinstance(ours, BrokerUnavailableError):
            raise ours from first
        attempt = 1

        async def once() -> tuple[int, bool]:
            nonlocal attempt
            attempt += 1
            return await self._js_publish(subject, payload, headers)

        seq, duplicate = await self._retrying("publish", once)
        return seq, duplicate, attempt

    async def _live(self, stream: str, seq: int) -> bool:
        try:
            with self._errors("get message"):
                await self._js.get_msg(stream, seq=seq)
            return True
        except BrokerError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return False
            raise

    def _prepare(
        self, env: Envelope, msg_id: str, enqueued_at: float
    ) -> tuple[str, bytes, dict[str, str]]:
        body = env.body
        if body is None:
            raise InvalidMessageError("the NATS engine needs envelopes with body bytes")
        subject = self._subject(env.queue, self._priority(env.priority))
        return subject, body, self._headers(env, enqueued_at, msg_id)

    async def _published(
        self,
        env: Envelope,
        prepared: tuple[str, bytes, dict[str, str]],
        result: tuple[int, bool, int],
        duplicate_ok: bool,
    ) -> bool:
        """After a publish: notify waiters; sort out a duplicate id (see the module docs)."""
        seq, duplicate, attempt = result
        if not duplicate:
            await self._notify(env.queue, self._priority(env.priority))
            return True
        if duplicate_ok or attempt > 1:
            return True  # an earlier attempt of ours landed
        # The server saw this id within its window: still queued, or already consumed?
        if await self._live(self._q_stream, seq):
            raise DuplicateMessageError(
                f"message {env.message_id!r} is already in queue {env.queue!r}"
            )
        subject, body, headers = prepared
        headers[H_MSG_ID] = f"{headers[H_MSG_ID]}:{os.urandom(6).hex()}"
        await self._publish(subject, body, headers)
        await self._notify(env.queue, self._priority(env.priority))
        return True

    async def _publish_envelope(
        self, env: Envelope, *, msg_id: str, duplicate_ok: bool, enqueued_at: float
    ) -> bool:
        prepared = self._prepare(env, msg_id, enqueued_at)
        result = await self._publish(*prepared)
        return await self._published(env, prepared, result, duplicate_ok)

    async def _publish_envelopes(
        self, envs: Sequence[Envelope], msg_ids: Sequence[str], *, duplicate_ok: bool
    ) -> list[bool | BaseException]:
        """Publish several envelopes pipelined: all requests first, then the answers."""
        now = self._clock.now()
        prepared = [self._prepare(env, mid, now) for env, mid in zip(envs, msg_ids, strict=True)]
        handles: list[Any] = []
        for item in prepared:
            try:
                handles.append(await self._request_pub(*item))
            except Exception as exc:
                handles.append(exc)
        out: list[bool | BaseException] = []
        for env, item, handle in zip(envs, prepared, handles, strict=True):
            try:
                if isinstance(handle, Exception):
                    result = await self._publish_again(*item, handle)
                else:
                    try:
                        seq, duplicate = await self._pub_result(handle)
                        result = (seq, duplicate, 1)
                    except Exception as exc:
                        result = await self._publish_again(*item, exc)
                out.append(await self._published(env, item, result, duplicate_ok))
            except Exception as exc:
                out.append(exc)
        return out

    async def _claim_dedup(self, env: Envelope, window: float) -> tuple[bool, str | None]:
        """Record ``env.dedup_key`` unless sent to its queue within ``window``; (fresh, key)."""
        assert env.dedup_key is not None and self._kv_dedup is not None
        kv = self._kv_dedup
        key = f"{queue_token(env.queue)}.{_hash(env.dedup_key)}"
        now = self._clock.now()
        value = f"{now!r} {os.urandom(6).hex()}".encode()

        async def claim() -> bool:
            try:
                await kv.create(key, value)
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                await kv.create(key, value)
                return True
            if entry.value == value:
                return True  # our own claim, answered before a reconnect
            stored = (entry.value or b"").decode(errors="replace").split(" ")[0]
            seen = _fnum(stored, 0.0) or 0.0
            if now - seen < window:
                return False
            try:
                await kv.update(key, value, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return False  # someone else claimed it just now
            return True

        fresh = await self._retrying("dedup", claim)
        return fresh, key

    async def _unclaim(self, key: str) -> None:
        assert self._kv_dedup is not None
        with contextlib.suppress(Exception):
            await self._kv_dedup.delete(key)

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
        self._check_open()
        for env in envelopes:
            if env.body is None:
                raise InvalidMessageError("the NATS engine needs envelopes with body bytes")
        if max_depth is not None:
            counts: dict[str, int] = {}
            for env in envelopes:
                counts[env.queue] = counts.get(env.queue, 0) + 1
            await self._check_depth(counts, max_depth)
        results = [True] * len(envelopes)
        claims: dict[int, str] = {}
        window = min(float(dedup_window), self.dedup_window)
        if window > 0:
            for i, env in enumerate(envelopes):
                if env.dedup_key is None:
                    continue
                fresh, key = await self._claim_dedup(env, window)
                if not fresh:
                    results[i] = False
                elif key is not None:
                    claims[i] = key
        todo = [i for i, ok in enumerate(results) if ok]
        outcomes: list[bool | BaseException]
        if len(todo) == 1:
            env = envelopes[todo[0]]
            try:
                outcomes = [
                    await self._publish_envelope(
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
            outcomes = await self._publish_envelopes(
                chosen,
                [f"{queue_token(e.queue)}:{e.message_id}" for e in chosen],
                duplicate_ok=False,
            )
        failure: BaseException | None = None
        for i, outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
                if i in claims:
                    await self._unclaim(claims[i])
            else:
                results[i] = outcome
                if outcome:
                    self._count_sent(envelopes[i].queue, 1)
        if failure is not None:
            raise failure
        return results

    # ------------------------------------------------------------------ consumers
    def _queue_lock(self, queue: str) -> asyncio.Lock:
        lock = self._queue_locks.get(queue)
        if lock is None:
            lock = self._queue_locks[queue] = asyncio.Lock()
        return lock

    def _consumer_config(self, puller: _Puller) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=puller.name,
            durable_name=puller.name,
            filter_subject=puller.subject,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=puller.ack_wait,
            max_deliver=-1,
            max_ack_pending=-1,
            inactive_threshold=CONSUMER_INACTIVE_THRESHOLD,
        )

    async def _create_consumer(self, puller: _Puller) -> None:
        config = self._consumer_config(puller)
        await self._retrying(
            "create consumer", lambda: self._js.add_consumer(self._q_stream, config)
        )
        puller.missing = False

    async def _pullers_for(self, queue: str, lock_seconds: float) -> list[_Puller]:
        pullers = self._queues.get(queue)
        ack_wait = max(float(lock_seconds), 0.001)
        if pullers is not None and all(p.ack_wait == ack_wait and not p.missing for p in pullers):
            return pullers
        async with self._queue_lock(queue):
            pullers = self._queues.get(queue)
            if pullers is None:
                base = f"c{_hash(queue, 40)}"
                pullers = [
                    _Puller(
                        name=f"{base}_{p}",
                        queue=queue,
                        priority=p,
                        subject=self._subject(queue, p),
                        ack_wait=ack_wait,
                        next_subject=f"$JS.API.CONSUMER.MSG.NEXT.{self._q_stream}.{base}_{p}",
                    )
                    for p in PRIORITIES
                ]
                await asyncio.gather(*(self._create_consumer(p) for p in pullers))
                for p in pullers:
                    self._pullers[p.name] = p
                self._queues[queue] = pullers
                await self._watch(queue)  # from now on publishes wake ``wait``
                return pullers
            stale = [p for p in pullers if p.ack_wait != ack_wait or p.missing]
            for p in stale:
                p.ack_wait = ack_wait
            await asyncio.gather(*(self._create_consumer(p) for p in stale))
            return pullers

    async def _on_inbox(self, msg: Msg) -> None:
        """Dispatch everything addressed to this broker's inbox: publish acknowledgements
        (``P<n>``), ack confirmations (``A<n>``), pull deliveries (by consumer) and pull
        status messages (``<consumer>``)."""
        suffix = msg.subject[len(self._inbox_prefix) :]
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
                status = headers.get(_STATUS, "")
                puller.done.set_result(f"{status} {headers.get('Description', '')}")
            return
        try:
            name: str | None = msg.metadata.consumer
        except Exception:
            name = None
        puller = self._pullers.get(name) if name else None
        if puller is None:
            if not self._closed:
                with contextlib.suppress(Exception):
                    await self._nc.publish(reply, b"-NAK")
            return
        collector = puller.collector
        if collector is not None and len(collector) < puller.want:
            collector.append(msg)
            if len(collector) >= puller.want and puller.done is not None:
                if not puller.done.done():
                    puller.done.set_result("full")
        else:
            puller.stash.append((time.monotonic(), msg))

    async def _fetch(self, puller: _Puller, want: int) -> list[Msg]:
        """Lock up to ``want`` messages of one consumer (one no_wait pull request)."""
        async with puller.lock:
            got: list[Msg] = []
            if puller.stash:
                margin = min(0.5, puller.ack_wait / 4)
                now = time.monotonic()
                while puller.stash and len(got) < want:
                    received, msg = puller.stash.popleft()
                    if now - received < puller.ack_wait - margin:
                        got.append(msg)
                if len(got) >= want:
                    return got
            need = want - len(got)
            done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            puller.collector, puller.want, puller.done = got, want, done
            try:
                with self._errors("fetch"):
                    await self._nc.publish(
                        puller.next_subject,
                        b'{"batch":%d,"no_wait":true}' % need,
                        reply=self._inbox_prefix + puller.name,
                    )
                try:
                    status = await asyncio.wait_for(done, FETCH_TIMEOUT)
                except TimeoutError:
                    status = "timeout"
            finally:
                puller.collector, puller.want, puller.done = None, 0, None
            if status == "timeout" and not got:
                low, high = UNRESPONSIVE_BACKOFF
                puller.backoff = min(high, puller.backoff * 2) if puller.backoff else low
                puller.unresponsive_until = time.monotonic() + puller.backoff
            elif status != "reconnect":
                puller.backoff = 0.0
            if status.startswith("503") or (
                status.startswith("409") and "deleted" in status.lower()
            ):
                puller.missing = True
            return got

    # ------------------------------------------------------------------ receiving
    async def _meta(self, seq: int) -> _Meta | None:
        cached = self._meta_cache.get(seq)
        if cached is not None:
            return cached
        assert self._kv_meta is not None
        kv = self._kv_meta
        try:
            with self._errors("meta"):
                entry = await kv.get(str(seq))
        except BrokerError as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyNotFoundError):
                return None
            raise
        meta = _Meta.decode(entry.value)
        self._cache_meta(seq, meta)
        return meta

    def _cache_meta(self, seq: int, meta: _Meta) -> None:
        self._meta_cache[seq] = meta
        self._meta_cache.move_to_end(seq)
        while len(self._meta_cache) > 10_000:
            self._meta_cache.popitem(last=False)

    async def _save_meta(self, seq: int, meta: _Meta) -> None:
        assert self._kv_meta is not None
        kv = self._kv_meta
        self._cache_meta(seq, meta)
        await self._retrying("meta", lambda: kv.put(str(seq), meta.encode()))

    async def _drop_meta(self, seq: int) -> None:
        assert self._kv_meta is not None
        self._meta_cache.pop(seq, None)
        with contextlib.suppress(Exception):
            await self._kv_meta.delete(str(seq))

    async def _expire_held(self) -> None:
        """Forget locks past their clock deadline; hand back those the server still holds."""
        now = self._clock.now()
        mono = time.monotonic()
        for token, held in list(self._held.items()):
            if now >= held.deadline or mono >= held.real_deadline:
                del self._held[token]
                held.puller.may_have()
                if mono < held.real_deadline - 0.05:
                    try:  # confirmed, so a fetch right after sees it; else the server's
                        await self._ack_sync(held.msg, b"-NAK", budget=2.0)  # timer will
                    except BrokerUnavailableError:
                        pass

    async def receive(self, queue: str, max_messages: int, lock_seconds: float) -> list[Delivery]:
        """Lock and return up to ``max_messages`` available messages: priority, then FIFO."""
        self._check_open()
        if max_messages <= 0:
            return []
        watch = self._watches.get(queue)
        if watch is not None:
            watch.active_at = time.monotonic()  # a consumer at work (see _take_handoff)
        if watch is not None and watch.handoffs:
            # handed off while the queue was empty: no pull needed (that is their point)
            handoffs = watch.handoffs
            return [
                self._handoff_delivery(handoffs.popleft())
                for _ in range(min(max_messages, len(handoffs)))
            ]
        await self._expire_held()
        pullers = await self._pullers_for(queue, lock_seconds)
        out: list[Delivery] = []
        for puller in pullers:
            if puller.skip(time.monotonic()):
                continue
            while len(out) < max_messages:
                want = max_messages - len(out)
                started = time.monotonic()
                msgs = await self._fetch(puller, want)
                if puller.missing:
                    await self._pullers_for(queue, lock_seconds)
                    if want > len(msgs):
                        msgs += await self._fetch(puller, want - len(msgs))
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
        watch = self._watches.get(queue)  # again: the first receive creates it
        if watch is not None:
            watch.drained = len(out) < max_messages
            watch.active_at = time.monotonic()
        return out

    async def _to_delivery(self, puller: _Puller, msg: Msg, lock_seconds: float) -> Delivery | None:
        headers = msg.headers or {}
        info = _Info.decode(headers.get(H_INFO))
        md = msg.metadata
        seq = int(md.sequence.stream)
        delivered = int(md.num_delivered)
        meta = await self._meta(seq) if delivered > 1 else None
        available_at = info.available_at
        now = self._clock.now()
        if available_at > now + 0.001:
            meta = meta or _Meta()
            meta.phantom += 1
            await self._save_meta(seq, meta)
            remaining = available_at - now
            with self._errors("nak"):
                await msg.nak(delay=remaining)
            self._schedule_wake(puller.queue, remaining, puller.priority)
            return None
        message_id = info.message_id
        token = f"{seq}.{delivered}"
        self._held[token] = _Held(
            msg=msg,
            queue=puller.queue,
            message_id=message_id,
            puller=puller,
            seq=seq,
            deadline=now + lock_seconds,
            real_deadline=time.monotonic() + puller.ack_wait,
            has_meta=meta is not None,
        )
        puller.may_have(time.monotonic() + puller.ack_wait)  # if the lock runs out
        if meta is not None:
            last_error = meta.error
        else:
            stored = headers.get(H_ERROR)
            last_error = None if stored is None else _uq(stored)
        return Delivery(
            queue=puller.queue,
            message_id=message_id,
            token=token,
            attempts=_attempts(delivered, meta, headers),
            priority=puller.priority,
            enqueued_at=info.enqueued_at,
            expires_at=info.expires_at,
            body=msg.data,
            message=None,
            options=DEFAULT_OPTIONS,
            last_error=last_error,
        )

    # ------------------------------------------------------------------ settling
    def _take(self, queue: str, settlement: SettlementRef, *, pop: bool = True) -> _Held | None:
        held = self._held.get(settlement.token)
        if held is None or held.queue != queue or held.message_id != settlement.message_id:
            return None
        if self._clock.now() >= held.deadline or time.monotonic() >= held.real_deadline:
            self._held.pop(settlement.token, None)
            return None
        if pop:
            del self._held[settlement.token]
        return held

    async def _ack_sync(
        self, msg: Msg, payload: bytes = b"+ACK", *, budget: float = RETRY_SECONDS / 2
    ) -> None:
        reply = msg.reply

        async def once() -> None:
            await self._nc.request(reply, payload, timeout=min(REQUEST_TIMEOUT, budget))

        await self._retrying("ack", once, budget=budget)

    async def ack(
        self,
        queue: str,
        settlements: Sequence[SettlementRef],
        *,
        processed_key: str | None = None,
        processed_ttl: float = 0.0,
        outbox: Sequence[Envelope] = (),
    ) -> list[bool]:
        """Remove settled messages (double ack); outbox and processed key first (not atomic)."""
        self._check_open()
        helds: list[_Held | _Handoff | None] = [
            self._settle_handoff(queue, s) if s.token[:1] == "h" else self._take(queue, s)
            for s in settlements
        ]
        live = [h for h in helds if isinstance(h, _Held)]
        if not live and all(h is None for h in helds):
            return [False] * len(helds)  # every lock is lost: record and enqueue nothing
        if processed_key is not None:
            if outbox:
                prefix = f"ob:{_hash(processed_key)}"
                for env in outbox:
                    if env.body is None:
                        raise InvalidMessageError("the NATS engine needs envelopes with body bytes")
                results = await self._publish_envelopes(
                    list(outbox), [f"{prefix}:{i}" for i in range(len(outbox))], duplicate_ok=True
                )
                for outcome in results:
                    if isinstance(outcome, BaseException):
                        raise outcome
            await self._record_processed(processed_key, processed_ttl)
        elif outbox:
            await self.send(list(outbox))
        groups: dict[str, list[Msg]] = {}
        for h in live:
            groups.setdefault(h.puller.name, []).append(h.msg)
        with self._errors("ack"):
            for msgs in groups.values():
                await self._send_acks(msgs)
        await self._settle_acks(stale_only=True)
        for h in live:
            if h.has_meta or h.seq in self._meta_cache:
                await self._drop_meta(h.seq)
        return [h is not None for h in helds]

    async def _send_acks(self, msgs: list[Msg], payload: bytes = b"+ACK") -> None:
        """Ack messages of one consumer; only the last asks for a confirmation (the server
        handles a consumer's acks in order), which is collected later (pipelined)."""
        key = f"A{next(self._ack_ids)}"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = self._acks[key] = _PendingAck(msgs, payload, future, 0.0)
        await self._publish_acks(key, pending)

    async def _publish_acks(self, key: str, pending: _PendingAck) -> None:
        pending.sent_at = time.monotonic()
        publish = self._nc.publish
        for msg in pending.msgs[:-1]:
            await publish(msg.reply, pending.payload)
        await publish(pending.msgs[-1].reply, pending.payload, reply=self._inbox_prefix + key)

    async def _settle_acks(self, *, stale_only: bool = False) -> None:
        """Wait until the server confirmed the acks sent so far (all, or only those pending
        longer than ``REQUEST_TIMEOUT``); send unconfirmed ones again (same confirmation
        subject) until confirmed or ``RETRY_SECONDS`` pass."""
        if not self._acks:
            return
        now = time.monotonic()
        if stale_only:
            waiting = {k: p for k, p in self._acks.items() if now - p.sent_at > REQUEST_TIMEOUT}
            resend = True
        else:
            waiting, resend = dict(self._acks), False
        deadline = now + RETRY_SECONDS
        while waiting:
            if resend:
                self._check_open()
                with self._errors("ack"):
                    for key, pending in waiting.items():
                        await self._publish_acks(key, pending)
            await asyncio.wait([p.future for p in waiting.values()], timeout=REQUEST_TIMEOUT)
            waiting = {k: p for k, p in waiting.items() if not p.future.done()}
            if waiting and time.monotonic() > deadline:
                for key in waiting:
                    self._acks.pop(key, None)  # the server redelivers what it did not get
                raise BrokerUnavailableError("NATS ack: no confirmation from the server")
            resend = True

    async def _record_processed(self, key: str, ttl: float) -> None:
        assert self._kv_done is not None
        kv = self._kv_done
        expires = self._clock.now() + ttl if ttl > 0 else 0.0
        value = repr(expires).encode()
        await self._retrying("record processed", lambda: kv.put(_hash(key, 64), value))

    async def is_processed(self, key: str) -> bool:
        """Whether ``key`` was recorded by ``ack`` and its ttl (engine clock) has not run out."""
        self._check_open()
        assert self._kv_done is not None
        kv = self._kv_done
        try:
            entry = await self._retrying("is_processed", lambda: kv.get(_hash(key, 64)))
        except BrokerError as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyNotFoundError):
                return False
            raise
        expires = _fnum(entry.value.decode() if entry.value else None, 0.0) or 0.0
        return expires == 0.0 or self._clock.now() < expires

    async def release(
        self, queue: str, settlement: SettlementRef, *, delay: float = 0.0, error: str | None = None
    ) -> bool:
        """``nak(delay)``: delivered again after ``delay`` seconds; ``error`` is kept."""
        self._check_open()
        if settlement.token[:1] == "h":
            handoff = self._settle_handoff(queue, settlement)
            if handoff is None:
                return False
            await self._requeue(handoff, prior=1, delay=delay, error=error)
            return True
        held = self._take(queue, settlement)
        if held is None:
            return False
        if error is not None or held.has_meta:
            meta = (await self._meta(held.seq)) or _Meta()
            meta.error = error
            await self._save_meta(held.seq, meta)
        payload = b"-NAK"
        if delay > 0:
            payload += b' {"delay": %d}' % int(delay * 1e9)
        await self._ack_sync(held.msg, payload)  # confirmed: a receive right after sees it
        if delay > 0:
            self._schedule_wake(queue, delay, held.puller.priority)
        else:
            await self._notify(queue, held.puller.priority)
        return True

    async def renew(
        self, queue: str, settlements: Sequence[SettlementRef], lock_seconds: float
    ) -> list[bool]:
        """Restart locks with ``+WPI``; the server extends by the consumer's ``ack_wait``."""
        self._check_open()
        out: list[bool] = []
        for s in settlements:
            if s.token[:1] == "h":  # held by this process alone: nothing to extend
                out.append(self._settle_handoff(queue, s, pop=False) is not None)
                continue
            held = self._take(queue, s, pop=False)
            if held is None:
                out.append(False)
                continue
            with self._errors("renew"):
                await held.msg.in_progress()
            held.deadline = self._clock.now() + lock_seconds
            held.real_deadline = time.monotonic() + held.puller.ack_wait
            out.append(True)
        if any(s.token[:1] != "h" for s in settlements):
            with self._errors("renew"):
                await self._nc.flush(timeout=int(REQUEST_TIMEOUT))
        return out

    async def dead_letter(
        self, queue: str, settlement: SettlementRef, *, reason: str, error: str | None = None
    ) -> bool:
        """Copy the message to ``<ns>.dlq.<queue>`` with why, then terminate it in the queue."""
        self._check_open()
        if settlement.token[:1] == "h":
            handoff = self._settle_handoff(queue, settlement)
            if handoff is None:
                return False
            await self._publish(
                self._dlq_subject(queue),
                handoff.body,
                self._dead_headers(
                    queue, f"ho:{handoff.info.message_id}", handoff.info.encode(), 1, reason, error
                ),
            )
            return True
        held = self._take(queue, settlement)
        if held is None:
            return False
        msg = held.msg
        headers = msg.headers or {}
        md = msg.metadata
        meta = await self._meta(held.seq) if (held.has_meta or md.num_delivered > 1) else None
        dl_headers = self._dead_headers(
            queue,
            f"{held.seq}:{md.num_delivered}",
            headers.get(H_INFO, ""),
            _attempts(int(md.num_delivered), meta, headers),
            reason,
            error,
        )
        await self._publish(self._dlq_subject(queue), msg.data or b"", dl_headers)
        await self._ack_sync(msg, b"+TERM")
        if meta is not None or held.has_meta:
            await self._drop_meta(held.seq)
        return True

    def _dead_headers(
        self, queue: str, key: str, info: str, attempts: int, reason: str, error: str | None
    ) -> dict[str, str]:
        headers = {
            H_MSG_ID: f"dl:{queue_token(queue)}:{key}",
            H_QUEUE: _hq(queue),
            H_INFO: info,
            H_REASON: _hq(reason),
            H_ATTEMPTS: str(attempts),
            H_DEAD_AT: repr(self._clock.now()),
        }
        if error is not None:
            headers[H_ERROR] = _hq(error)
        return headers

    # ------------------------------------------------------------------ dead letters
    def _next_dead(self, subject: str, seq: int) -> Callable[[], Awaitable[api.RawStreamMsg]]:
        return lambda: self._js.get_msg(self._dlq_stream, seq=seq, subject=subject, next=True)

    def _delete_dead(self, seq: int) -> Callable[[], Awaitable[bool]]:
        async def delete() -> bool:
            try:
                return bool(await self._js.delete_msg(self._dlq_stream, seq))
            except nats.js.errors.NotFoundError:
                return True  # an earlier attempt deleted it

        return delete

    async def _scan_dead(self, queue: str, limit: int | None) -> list[api.RawStreamMsg]:
        subject = self._dlq_subject(queue)
        out: list[api.RawStreamMsg] = []
        seq = 1
        while limit is None or len(out) < limit:
            try:
                raw = await self._retrying("dead letters", self._next_dead(subject, seq))
            except BrokerError as exc:
                if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                    break
                raise
            out.append(raw)
            seq = int(raw.seq or 0) + 1
        return out

    def _dead_letter(self, queue: str, raw: api.RawStreamMsg) -> DeadLetter:
        headers = raw.headers or {}
        error = headers.get(H_ERROR)
        info = _Info.decode(headers.get(H_INFO))
        return DeadLetter(
            queue=queue,
            message_id=info.message_id,
            priority=info.priority,
            body=raw.data or b"",
            message=None,
            options=DEFAULT_OPTIONS,
            reason=unquote(headers.get(H_REASON, "")),
            error=unquote(error) if error is not None else None,
            attempts=int(_fnum(headers.get(H_ATTEMPTS), 0.0) or 0),
            enqueued_at=info.enqueued_at,
            dead_lettered_at=_fnum(headers.get(H_DEAD_AT), 0.0) or 0.0,
        )

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead letters, oldest first."""
        self._check_open()
        if limit <= 0:
            return []
        return [self._dead_letter(queue, raw) for raw in await self._scan_dead(queue, limit)]

    async def resubmit(self, queue: str, message_id: str) -> bool:
        """Republish a dead letter to its queue (new stream message: attempts reset), delete it."""
        self._check_open()
        for raw in await self._scan_dead(queue, None):
            letter = self._dead_letter(queue, raw)
            if letter.message_id != message_id:
                continue
            priority = self._priority(letter.priority)
            info = _Info(priority, letter.enqueued_at, 0.0, None, letter.message_id)
            headers = {H_MSG_ID: f"rs:{queue_token(queue)}:{raw.seq}", H_INFO: info.encode()}
            await self._publish(self._subject(queue, priority), raw.data or b"", headers)
            await self._retrying("resubmit", self._delete_dead(int(raw.seq or 0)))
            await self._notify(queue, priority)
            return True
        return False

    async def _purge(self, stream: str, subject: str) -> int:
        async def once() -> int:
            resp = await self._nc.request(
                f"$JS.API.STREAM.PURGE.{stream}",
                json.dumps({"filter": subject}).encode(),
                timeout=REQUEST_TIMEOUT,
            )
            data = json.loads(resp.data)
            if "error" in data:
                raise nats.js.errors.APIError.from_error(data["error"])
            return int(data.get("purged", 0))

        return await self._retrying("purge", once)

    async def purge_dead_letters(self, queue: str) -> int:
        """Delete the queue's dead letters; return how many."""
        self._check_open()
        return await self._purge(self._dlq_stream, self._dlq_subject(queue))

    # ------------------------------------------------------------------ inspection
    async def _subject_counts(self, stream: str, subjects: str) -> dict[str, int]:
        info = await self._retrying(
            "stream info", lambda: self._js.stream_info(stream, subjects_filter=subjects)
        )
        return {str(k): int(v) for k, v in (info.state.subjects or {}).items()}

    async def depth(self, queue: str) -> int:
        """Messages in the queue (available, delayed or locked), dead letters excluded."""
        self._check_open()
        await self._settle_acks()
        return await self._measure_depth(queue)

    async def _measure_depth(self, queue: str) -> int:
        counts = await self._subject_counts(
            self._q_stream, f"{self.namespace}.q.{queue_token(queue)}.*"
        )
        depth = sum(counts.values())
        self._depth_cache[queue] = (time.monotonic(), depth)
        return depth

    async def _check_depth(self, counts: dict[str, int], max_depth: int) -> None:
        """Refuse (QueueFullError) when a queue would go over ``max_depth``.

        Far below the limit a depth measured less than ``DEPTH_CACHE_SECONDS`` ago (plus what
        this broker sent since) is trusted; near it, the depth is measured.
        """
        margin = max(1, max_depth // 10)
        for queue, count in counts.items():
            cached = self._depth_cache.get(queue)
            if (
                cached is not None
                and time.monotonic() - cached[0] < DEPTH_CACHE_SECONDS
                and cached[1] + count <= max_depth - margin
            ):
                continue
            async with self._queue_lock(f"depth:{queue}"):
                cached = self._depth_cache.get(queue)
                if (
                    cached is not None
                    and time.monotonic() - cached[0] < DEPTH_CACHE_SECONDS
                    and cached[1] + count <= max_depth - margin
                ):
                    continue
                await self._settle_acks()
                current = await self._measure_depth(queue)
            if current + count > max_depth:
                raise QueueFullError(
                    f"queue {queue!r} holds {current} messages; max_queue_size is {max_depth}"
                )

    def _count_sent(self, queue: str, count: int) -> None:
        cached = self._depth_cache.get(queue)
        if cached is not None:
            self._depth_cache[queue] = (cached[0], cached[1] + count)

    async def dead_letter_depth(self, queue: str) -> int:
        """Messages in the queue's dead-letter queue."""
        self._check_open()
        await self._settle_acks()
        subject = self._dlq_subject(queue)
        return (await self._subject_counts(self._dlq_stream, subject)).get(subject, 0)

    async def queues(self) -> list[str]:
        """Names of queues that hold messages or dead letters."""
        self._check_open()
        await self._settle_acks()
        ns = self.namespace
        names: set[str] = set()
        for stream, pattern, index in (
            (self._q_stream, f"{ns}.q.>", -2),
            (self._dlq_stream, f"{ns}.dlq.>", -1),
        ):
            for subject, count in (await self._subject_counts(stream, pattern)).items():
                name = token_queue(subject.split(".")[index])
                if count > 0 and name is not None:
                    names.add(name)
        return sorted(names)

    async def delete_queue(self, queue: str) -> None:
        """Remove the queue's consumers, messages and dead letters."""
        self._check_open()
        await self._settle_acks()
        self._depth_cache.pop(queue, None)
        async with self._queue_lock(queue):
            pullers = self._queues.pop(queue, None) or []
            for p in pullers:
                self._pullers.pop(p.name, None)
            base = f"c{_hash(queue, 40)}"
            for priority in PRIORITIES:
                try:
                    with self._errors("delete consumer"):
                        await self._js.delete_consumer(self._q_stream, f"{base}_{priority}")
                except BrokerError as exc:
                    if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                        raise
            for token, held in list(self._held.items()):
                if held.queue == queue:
                    del self._held[token]
            await self._purge(self._q_stream, f"{self.namespace}.q.{queue_token(queue)}.*")
            await self._purge(self._dlq_stream, self._dlq_subject(queue))

    # ------------------------------------------------------------------ bindings
    async def _update_bindings(self, topic: str, change: Callable[[set[str]], None]) -> None:
        assert self._kv_bind is not None
        kv = self._kv_bind
        key = queue_token(topic)

        async def once() -> bool:
            try:
                entry = await kv.get(key)
                current = set(json.loads(entry.value or b"[]"))
                revision: int | None = entry.revision
            except nats.js.errors.KeyNotFoundError:
                current, revision = set(), None
            before = set(current)
            change(current)
            if current == before:
                return True
            value = json.dumps(sorted(current)).encode()
            try:
                if revision is None:
                    await kv.create(key, value)
                else:
                    await kv.update(key, value, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return False
            return True

        for _ in range(50):
            if await self._retrying("bind", once):
                return
        raise BrokerError(f"could not update the bindings of {topic!r}: too much contention")

    async def bind(self, topic: str, queue: str) -> None:
        """Subscribe ``queue`` to ``topic`` (durable, shared by every process)."""
        self._check_open()
        await self._update_bindings(topic, lambda s: s.add(queue))

    async def unbind(self, topic: str, queue: str) -> None:
        """Remove a binding."""
        self._check_open()
        await self._update_bindings(topic, lambda s: s.discard(queue))

    async def bindings(self, topic: str) -> list[str]:
        """Queues bound to ``topic``."""
        self._check_open()
        assert self._kv_bind is not None
        kv = self._kv_bind
        try:
            entry = await self._retrying("bindings", lambda: kv.get(queue_token(topic)))
        except BrokerError as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyNotFoundError):
                return []
            raise
        return sorted(str(q) for q in json.loads(entry.value or b"[]"))

    # ------------------------------------------------------------------ waiting
    async def _watch(self, queue: str) -> _Watch:
        watch = self._watches.get(queue)
        if watch is not None:
            return watch
        event = asyncio.Event()

        async def on_publish(msg: Msg) -> None:
            data = msg.data
            watch = self._watches.get(queue)
            if watch is not None:
                watch.drained = False  # queued messages first: no handoff overtakes them
            pullers = self._queues.get(queue)
            if pullers is not None:
                if len(data) == 1 and 48 <= data[0] <= 52:
                    pullers[data[0] - 48].may_have()
                else:
                    for puller in pullers:
                        puller.may_have()
            event.set()

        async def on_handoff(msg: Msg) -> None:
            headers = msg.headers or {}
            wait = _fnum(headers.get(H_WAIT), HANDOFF_TIMEOUT) or HANDOFF_TIMEOUT
            taken = bool(msg.data) and self._take_handoff(
                queue, msg.data, _Info.decode(headers.get(H_INFO)), msg.reply or None, wait
            )
            if not taken and msg.reply:  # taken: answered within HANDOFF_CONFIRM_SECONDS
                with contextlib.suppress(Exception):
                    await self._nc.publish(msg.reply, b"0")

        token = queue_token(queue)
        with self._errors("watch"):
            sub = await self._nc.subscribe(f"{self.namespace}.n.{token}", cb=on_publish)
            handoff_sub = await self._nc.subscribe(
                f"{self.namespace}.h.{token}", queue=f"{self.namespace}.h", cb=on_handoff
            )
        watch = self._watches.get(queue)
        if watch is not None:  # a concurrent wait won the race
            for extra in (sub, handoff_sub):
                with contextlib.suppress(Exception):
                    await extra.unsubscribe()
            return watch
        watch = self._watches[queue] = _Watch(event=event, sub=sub, handoff_sub=handoff_sub)
        return watch

    def _schedule_wake(self, queue: str, delay: float, priority: int | None = None) -> None:
        """Messages of ``queue`` (one priority or any) may be available in ``delay`` s."""
        pullers = self._queues.get(queue)
        if pullers is not None:
            at = time.monotonic() + delay if delay > 0 else 0.0
            if priority is None:
                for puller in pullers:
                    puller.may_have(at)
            else:
                pullers[priority].may_have(at)
        watch = self._watches.get(queue)
        if watch is None:
            return
        if delay <= 0:
            watch.drained = False
            watch.event.set()
        else:
            watch.wake_at = min(watch.wake_at, time.monotonic() + delay)

    async def wait(self, queue: str, timeout: float) -> None:
        """Return when something was published to ``queue`` (any process), a local release or
        lock deadline comes due, or after ``timeout`` seconds of real time."""
        self._check_open()
        watch = await self._watch(queue)
        if watch.event.is_set():
            watch.event.clear()
            watch.active_at = time.monotonic()
            return
        now = time.monotonic()
        wake = watch.wake_at
        for held in self._held.values():
            if held.queue == queue:
                wake = min(wake, held.real_deadline)
        limit = max(0.0, timeout)
        if wake != float("inf"):
            limit = min(limit, max(0.0, wake - now))
        watch.waiters += 1
        try:
            async with asyncio.timeout(limit):  # no extra task, unlike wait_for
                await watch.event.wait()
        except TimeoutError:
            pass
        finally:
            watch.waiters -= 1
            watch.active_at = time.monotonic()
        if time.monotonic() >= watch.wake_at:
            watch.wake_at = float("inf")
        watch.event.clear()


def _attempts(delivered: int, meta: _Meta | None, headers: dict[str, str]) -> int:
    """Attempts so far: the server's deliveries, minus those the engine caused to honour a
    delivery time, plus those made before the message was stored (``Aos-Prior``)."""
    attempts = max(1, delivered - (meta.phantom if meta else 0))
    prior = headers.get(H_PRIOR)
    if prior is not None and prior.isdigit():
        attempts += int(prior)
    return attempts


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _expire_future(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        return (
            getattr(exc, "code", None) == 503 or getattr(exc, "err_code", None) in _RETRY_ERR_CODES
        )
    return False


async def create_nats_broker(
    url: str,
    *,
    clock: Clock,
    dedup_window: float = 600.0,
    namespace: str | None = None,
    replicas: int | None = None,
    connect_timeout: float = 10.0,
) -> NatsBroker:
    """Connect to NATS (one server or a cluster) and return a ready :class:`NatsBroker`.

    ``url`` is ``nats://host:port`` or a comma list of servers, with optional query
    ``?namespace=x&replicas=3``; the keyword arguments win over the query. Streams and
    buckets are created when missing. Raises :class:`BrokerUnavailableError` when no server
    answers within ``connect_timeout`` seconds, :class:`ConfigurationError` for a bad URL.
    Once connected, the client reconnects by itself for as long as the broker is open.
    """
    servers, options = parse_nats_url(url)
    ns = namespace if namespace is not None else options.get("namespace", DEFAULT_NAMESPACE)
    if not _NAMESPACE_RE.match(ns):
        raise ConfigurationError(
            f"NATS namespace {ns!r} must be 1-64 characters of letters, digits, '_' or '-'"
        )
    reps_raw: Any = replicas if replicas is not None else options.get("replicas", 1)
    try:
        reps = int(reps_raw)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"NATS replicas must be an integer, not {reps_raw!r}") from exc
    if not 1 <= reps <= 5:
        raise ConfigurationError("NATS replicas must be between 1 and 5")
    if dedup_window < 0:
        raise ConfigurationError("dedup_window must be >= 0")

    async def on_error(exc: Exception) -> None:
        _log.debug("nats connection error: %r", exc)

    async def on_disconnect() -> None:
        _log.info("disconnected from NATS; reconnecting")

    hooks: list[Callable[[], Awaitable[None]]] = []

    async def on_reconnect() -> None:
        _log.info("reconnected to NATS")
        for hook in hooks:
            await hook()

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                servers=servers,
                name="aos-messaging",
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                no_echo=True,
                reconnect_time_wait=0.25,
                connect_timeout=2,
                ping_interval=10,
                max_outstanding_pings=3,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            ),
            timeout=connect_timeout,
        )
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise BrokerUnavailableError(f"cannot connect to NATS at {', '.join(servers)}") from exc
    broker = NatsBroker(nc, clock=clock, namespace=ns, replicas=reps, dedup_window=dedup_window)
    hooks.append(broker._on_reconnected)
    try:
        await broker._setup()
    except BaseException as exc:
        await broker.close()
        if isinstance(exc, MessagingError):
            raise
        if isinstance(exc, nats.errors.Error):
            raise BrokerError(f"NATS setup failed: {exc}") from exc
        raise
    return broker
