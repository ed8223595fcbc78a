"""The JetStream assets of a namespace: created when missing, taken when they exist.

* Stream ``<ns>_Q`` (work-queue retention, subjects ``<ns>.q.>``, ``duplicate_window`` =
  ``dedup_window``) holds every queue; stream ``<ns>_DLQ`` (limits retention, subjects
  ``<ns>.dlq.>``) holds dead letters, one subject per queue.
* Key-value buckets: ``<ns>_bind`` (topic bindings), ``<ns>_done`` (exactly-once processed
  keys), ``<ns>_dedup`` (``dedup_key`` records), ``<ns>_meta`` (per-message ``last_error``
  and delay bookkeeping, only for messages that have them).

Streams are replicated ``replicas`` times. Several processes may start on one namespace at
once; :func:`create_or_take` lets each of them end up with the same assets.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar, cast

import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue

from ...errors import BrokerError, ConfigurationError
from .connection import Connection
from .translate import caused_by

__all__ = ["META_MAX_AGE", "PROCESSED_MAX_AGE", "Buckets", "create_or_take", "drop", "ensure"]

_T = TypeVar("_T")

#: Processed keys live at most this long whatever their ttl.
PROCESSED_MAX_AGE = 7 * 24 * 3600.0
#: Per-message bookkeeping (last error, delay redeliveries) lives at most this long.
META_MAX_AGE = 7 * 24 * 3600.0
# Creating a stream: its name is taken (10058); its subjects overlap another's (10065).
_NAME_IN_USE = 10058
_SUBJECTS_OVERLAP = 10065
# How often an overlap is looked at again before it counts as another stream's subjects.
_OVERLAP_LOOKS = 5


@dataclass(frozen=True, slots=True)
class Buckets:
    """The key-value buckets of a namespace."""

    bind: KeyValue
    done: KeyValue
    dedup: KeyValue
    meta: KeyValue


async def ensure(conn: Connection, *, replicas: int, dedup_window: float) -> Buckets:
    """Create the streams and buckets of ``conn``'s namespace (or take those that exist)."""
    names = conn.subjects
    # the queues' stream and the dead letters' stream: name, subjects, retention, duplicate window
    streams = (
        (names.q_stream, names.all_queues, api.RetentionPolicy.WORK_QUEUE, max(dedup_window, 1.0)),
        (names.dlq_stream, names.all_dead, api.RetentionPolicy.LIMITS, 120.0),
    )
    configs = [
        api.StreamConfig(
            name=name,
            subjects=[subjects],
            retention=retention,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=window,
        )
        for name, subjects, retention, window in streams
    ]
    bind, done, dedup, meta = names.buckets()
    # independent assets: create them concurrently (each is a raft group in a cluster)
    results = await asyncio.gather(
        *(_ensure_stream(conn, config) for config in configs),
        _ensure_kv(conn, bind, None, replicas),
        _ensure_kv(conn, done, PROCESSED_MAX_AGE, replicas),
        _ensure_kv(conn, dedup, max(dedup_window, 1.0), replicas),
        _ensure_kv(conn, meta, META_MAX_AGE, replicas),
        return_exceptions=True,
    )
    for outcome in results:
        if isinstance(outcome, BaseException):
            raise outcome
    bind_kv, done_kv, dedup_kv, meta_kv = (cast(KeyValue, kv) for kv in results[len(configs) :])
    return Buckets(bind_kv, done_kv, dedup_kv, meta_kv)


async def drop(conn: Connection) -> None:
    """Delete every stream and bucket of ``conn``'s namespace (those missing are skipped)."""
    names = conn.subjects
    for stream in (names.q_stream, names.dlq_stream, *(f"KV_{b}" for b in names.buckets())):
        try:
            with conn.errors("delete stream"):
                await conn.js.delete_stream(stream)
        except BrokerError as exc:
            if not caused_by(exc, nats.js.errors.NotFoundError):
                raise


async def _ensure_stream(conn: Connection, config: api.StreamConfig) -> None:
    name = str(config.name)

    async def existing() -> None:
        info = await conn.js.stream_info(name)
        if info.config.retention != config.retention:
            raise ConfigurationError(f"stream {name} exists with retention {info.config.retention}")

    async def create() -> None:
        await create_or_take(name, lambda: conn.js.add_stream(config), existing)

    await conn.retrying("create stream", create)


async def _ensure_kv(conn: Connection, bucket: str, ttl: float | None, replicas: int) -> KeyValue:
    async def create() -> KeyValue:
        return await create_or_take(
            f"KV_{bucket}",
            lambda: conn.js.create_key_value(bucket=bucket, history=1, ttl=ttl, replicas=replicas),
            lambda: conn.js.key_value(bucket),
        )

    return await conn.retrying("create bucket", create)


async def create_or_take(
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
