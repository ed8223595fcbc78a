"""StorageManager backend on NATS JetStream key-value (``nats://host:4222[,host2:port]``).

Everything lives in one KV bucket ``<namespace>_STORE`` (namespace from ``?namespace=``,
default ``aos``; ``?replicas=3`` on a cluster), so conversations, the agent registry, the key
ring and permissions are shared by every machine that reaches the cluster.

Keys are hex-encoded (NATS keys allow few characters): ``k.<ns>.<key>`` for values,
``l.<ns>.<stream>.<seq>`` for log entries, ``h.<ns>.<stream>`` for a log's length hint.

- ``update`` is optimistic (compare-and-set on the entry's revision, retried on conflict), so
  under contention ``fn`` may run more than once; it must not have side effects.
- ``append`` claims the next sequence number by *creating* its entry key: the claim and the
  write are one atomic operation, so logs have no gaps and no duplicates across processes.
- ``list`` lists the namespace's keys and reads each value: fine for registries and key rings,
  not meant for millions of keys.
- It is a :class:`~.base.ChangeFeed`: the cursor is the bucket stream's last sequence (one
  ``STREAM.INFO``), and the changes of a namespace are read with "next message of subject
  ``$KV.<bucket>.k.<ns>.>`` from sequence n" (``STREAM.MSG.GET``), one request per change,
  no consumer. A reader that caches a namespace asks the cursor and reads nothing more when
  it did not move, so its cost does not grow with the number of keys.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..config.urls import parse_nats_url
from ..messaging.clock import Clock
from ..messaging.errors import MissingExtraError, StorageError
from .base import KeyChange, KeyRows, LogRows, TextUpdater

try:
    import nats
    import nats.errors
    import nats.js.errors as js_errors
    from nats.js import api
    from nats.js.kv import KeyValue
except ImportError as exc:  # pragma: no cover - only without the extra
    raise MissingExtraError("NATS storage", "nats") from exc

__all__ = ["NatsStorageBackend"]

_CAS_ATTEMPTS = 200
#: What ``changes`` returns (named here: the class's ``list`` method shadows the builtin).
_Changes = list[KeyChange]


def _hex(text: str) -> str:
    return text.encode().hex()


def _unhex(token: str) -> str:
    return bytes.fromhex(token).decode()


class NatsStorageBackend:
    """A :class:`~.manager.StorageBackend` on a JetStream KV bucket."""

    def __init__(self, url: str, clock: Clock) -> None:
        self._servers, options = parse_nats_url(url)
        self._namespace = options.get("namespace", "aos")
        self._replicas = int(options.get("replicas", "1"))
        self._clock = clock
        self._nc: Any = None
        self._kv: KeyValue | None = None

    async def open(self) -> None:
        """Connect and create (or bind) the bucket."""
        try:
            self._nc = await nats.connect(
                servers=self._servers,
                connect_timeout=5,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
            )
            js = self._nc.jetstream()
            bucket = f"{self._namespace}_STORE"
            try:
                self._kv = await js.key_value(bucket)
            except js_errors.BucketNotFoundError:
                self._kv = await js.create_key_value(
                    api.KeyValueConfig(bucket=bucket, history=1, replicas=self._replicas)
                )
        except Exception as exc:
            if self._nc is not None:
                await self._nc.close()
            raise StorageError(f"cannot open NATS storage at {self._servers}: {exc}") from exc

    async def close(self) -> None:
        """Close the connection."""
        if self._nc is not None:
            try:
                await self._nc.close()
            except Exception as exc:  # closing an already broken connection
                raise StorageError(f"closing NATS storage failed: {exc}") from exc
            finally:
                self._nc = None

    @property
    def kv(self) -> KeyValue:
        """The bucket (after ``open``)."""
        if self._kv is None:
            raise StorageError("NATS storage is not open")
        return self._kv

    async def _get(self, key: str) -> tuple[str | None, int]:
        try:
            entry = await self.kv.get(key)
        except js_errors.KeyNotFoundError:  # includes KeyDeletedError
            return None, 0
        except Exception as exc:
            raise StorageError(f"NATS storage get failed: {exc}") from exc
        value = entry.value
        return (value.decode() if value is not None else None), int(entry.revision or 0)

    async def get(self, ns: str, key: str) -> str | None:
        """The stored text or None."""
        return (await self._get(f"k.{_hex(ns)}.{_hex(key)}"))[0]

    async def put(self, ns: str, key: str, text: str) -> None:
        """Insert or replace."""
        try:
            await self.kv.put(f"k.{_hex(ns)}.{_hex(key)}", text.encode())
        except Exception as exc:
            raise StorageError(f"NATS storage put failed: {exc}") from exc

    async def delete(self, ns: str, key: str) -> bool:
        """Remove; whether it existed."""
        name = f"k.{_hex(ns)}.{_hex(key)}"
        text, revision = await self._get(name)
        if text is None:
            return False
        try:
            await self.kv.delete(name, last=revision)
        except js_errors.KeyWrongLastSequenceError:
            return await self.delete(ns, key)
        except Exception as exc:
            raise StorageError(f"NATS storage delete failed: {exc}") from exc
        return True

    async def list(self, ns: str, prefix: str, limit: int | None) -> KeyRows:
        """Pairs under ``prefix`` sorted by key."""
        head = f"k.{_hex(ns)}."
        names = await self._key_names(head)
        keys = sorted(k for k in (_unhex(n[len(head) :]) for n in names) if k.startswith(prefix))
        rows: KeyRows = []
        for key in keys:
            if limit is not None and len(rows) >= limit:
                break
            text = await self.get(ns, key)
            if text is not None:
                rows.append((key, text))
        return rows

    async def _key_names(self, head: str) -> tuple[str, ...]:
        """The bucket's key names under ``head``, from the stream's own subject index.

        ``KeyValue.keys()`` replays the bucket through an ephemeral consumer and stops at the
        first message whose pending count reads 0, which an older server can report early on a
        bucket whose keys were updated: the listing came back short (1 of 3). The subject index
        of ``STREAM.INFO`` is one server snapshot, with no consumer. Deleted keys still have a
        subject there (their delete marker); ``get`` skips them. The server lists up to 100,000
        subjects in one answer.
        """
        bucket = f"{self._namespace}_STORE"
        prefix = f"$KV.{bucket}."
        try:
            info = await self._js().stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}{head}>")
        except Exception as exc:
            raise StorageError(f"NATS storage list failed: {exc}") from exc
        return tuple(s[len(prefix) :] for s in (info.state.subjects or {}))

    async def change_cursor(self) -> int:
        """The sequence of the bucket's latest write (0 when it was never written)."""
        try:
            info = await self._js().stream_info(f"KV_{self._namespace}_STORE")
        except Exception as exc:
            raise StorageError(f"NATS storage cursor failed: {exc}") from exc
        return int(info.state.last_seq or 0)

    async def changes(self, ns: str, since: int, until: int) -> _Changes:
        """The keys of ``ns`` written or deleted in ``(since, until]``, oldest first."""
        stream = f"KV_{self._namespace}_STORE"
        subject = f"$KV.{self._namespace}_STORE.k.{_hex(ns)}.>"
        out: _Changes = []
        seq = since + 1
        while seq <= until:
            try:
                msg = await self._js().get_msg(stream, seq=seq, subject=subject, next=True)
            except js_errors.NotFoundError:
                break
            except Exception as exc:
                raise StorageError(f"NATS storage changes failed: {exc}") from exc
            if msg.seq is None or msg.seq > until:
                break
            key = _unhex(str(msg.subject).rsplit(".", 1)[-1])
            operation = (msg.headers or {}).get("KV-Operation")
            deleted = operation in ("DEL", "PURGE")
            text = None if deleted else (msg.data or b"").decode()
            out.append(KeyChange(key, text))
            seq = int(msg.seq) + 1
        return out

    def _js(self) -> Any:
        if self._nc is None:
            raise StorageError("NATS storage is not open")
        return self._nc.jetstream()

    async def update(self, ns: str, key: str, fn: TextUpdater) -> str:
        """Compare-and-set loop; ``fn`` may run again after a conflict."""
        name = f"k.{_hex(ns)}.{_hex(key)}"
        for _ in range(_CAS_ATTEMPTS):
            current, revision = await self._get(name)
            new = fn(current)
            try:
                if revision:
                    await self.kv.update(name, new.encode(), last=revision)
                else:
                    await self.kv.create(name, new.encode())
                return new
            except js_errors.KeyWrongLastSequenceError:
                await asyncio.sleep(0)
                continue
            except Exception as exc:
                raise StorageError(f"NATS storage update failed: {exc}") from exc
        raise StorageError(f"NATS storage update of {key!r} kept conflicting; gave up")

    async def put_if_absent(self, ns: str, key: str, text: str) -> bool:
        """Create only when absent."""
        try:
            await self.kv.create(f"k.{_hex(ns)}.{_hex(key)}", text.encode())
            return True
        except js_errors.KeyWrongLastSequenceError:
            return False
        except Exception as exc:
            raise StorageError(f"NATS storage create failed: {exc}") from exc

    async def _length(self, ns: str, stream: str) -> int:
        base = f"{_hex(ns)}.{_hex(stream)}"
        hint_text, _ = await self._get(f"h.{base}")
        n = int(hint_text) if hint_text else 0
        while (await self._get(f"l.{base}.{n + 1:012d}"))[0] is not None:
            n += 1
        return n

    async def append(self, ns: str, stream: str, text: str) -> int:
        """Claim the next sequence number by creating its entry."""
        base = f"{_hex(ns)}.{_hex(stream)}"
        n = await self._length(ns, stream) + 1
        for _ in range(_CAS_ATTEMPTS * 10):
            try:
                await self.kv.create(f"l.{base}.{n:012d}", text.encode())
            except js_errors.KeyWrongLastSequenceError:
                n += 1
                continue
            except Exception as exc:
                raise StorageError(f"NATS storage append failed: {exc}") from exc
            try:
                await self.kv.put(f"h.{base}", str(n).encode())  # a hint, not the truth
            except Exception as exc:
                raise StorageError(f"NATS storage append failed: {exc}") from exc
            return n
        raise StorageError("NATS storage append kept conflicting; gave up")

    async def read_log(self, ns: str, stream: str, start: int, limit: int | None) -> LogRows:
        """Entries from ``start`` in order."""
        base = f"{_hex(ns)}.{_hex(stream)}"
        rows: LogRows = []
        seq = max(1, start)
        while limit is None or len(rows) < limit:
            text, _ = await self._get(f"l.{base}.{seq:012d}")
            if text is None:
                break
            rows.append((seq, text))
            seq += 1
        return rows

    async def log_length(self, ns: str, stream: str) -> int:
        """Last sequence number."""
        return await self._length(ns, stream)

    async def read_log_tail(self, ns: str, stream: str, n: int) -> LogRows:
        """The last ``n`` entries."""
        length = await self._length(ns, stream)
        return await self.read_log(ns, stream, max(1, length - n + 1), n)
