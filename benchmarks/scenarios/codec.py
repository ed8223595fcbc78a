"""The envelope codec by measurement: JSON libraries side by side, and the codec itself.

The envelopes are the ones the bus writes (a small TASK; an EVENT with metadata and a
signature; a QUERY with 40 fields of content and delivery options), as their event dicts
and their bytes. Each value is microseconds per envelope (lower is better), the best of
several rounds, beside the standard library measured in the same run:

* writing the event (``dict -> bytes``): stdlib ``json`` as the codec drives it (the C
  encoder, compact, ``allow_nan=False``), ``orjson.dumps``, ``msgspec.json.Encoder``;
* reading it (``bytes -> dict``): stdlib ``json`` with the codec's strict hooks (no NaN,
  no overflow), ``orjson.loads``, ``msgspec.json.Decoder``;
* the codec's ``encode()`` and ``decode()`` as shipped (orjson out, msgspec in, each
  falling back to the strict stdlib path) against the same functions with the fast
  libraries switched off (``strictjson.FAST_DUMPS``/``FAST_LOADS`` set to ``None``).

    python -m benchmarks.run --only codec [--quick]
"""

from __future__ import annotations

import gc
import json
import time
from datetime import UTC, datetime
from typing import Any, Callable

import msgspec
import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from AgentOperatingSystem.messaging.codec import strictjson
from AgentOperatingSystem.messaging.codec.envelope import decode, encode
from AgentOperatingSystem.messaging.codec.signing import sign_message
from AgentOperatingSystem.messaging.policy import DeliveryOptions, RetryPolicy
from AgentOperatingSystem.messaging.types import DeliveryMode, Message, MessageType
from benchmarks.common import result


def _envelopes() -> list[tuple[Message, DeliveryOptions]]:
    ts = datetime(2026, 12, 8, 1, 2, 3, 456789, tzinfo=UTC)
    small = Message(
        message_type=MessageType.TASK,
        sender_id="orchestrator",
        recipient_id="cfo_agent",
        content={"task": "review", "amount": 1250.5, "items": [1, 2, 3]},
        timestamp=ts,
        ttl=60,
    )
    event = Message(
        message_type=MessageType.EVENT,
        sender_id="CFO agent ü",
        recipient_id="auditor",
        content={"kind": "budget.approved", "by": "cfo", "ok": True},
        metadata={"trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        correlation_id="corr-17",
        timestamp=ts,
    )
    sign_message(event, Ed25519PrivateKey.generate())
    query = Message(
        message_type=MessageType.QUERY,
        sender_id="analyst",
        recipient_id="warehouse",
        content={f"field_{i}": ("text value é" if i % 3 else i * 1.5) for i in range(40)},
        reply_to="_reply.analyst",
        timestamp=ts,
    )
    options = DeliveryOptions(
        delivery_mode=DeliveryMode.EXACTLY_ONCE,
        idempotency_key="q-17",
        retry_policy=RetryPolicy(max_attempts=3),
    )
    return [(small, DeliveryOptions()), (event, DeliveryOptions()), (query, options)]


def _per_op(fn: Callable[[Any], Any], items: list[Any], n: int, rounds: int) -> float:
    """Best microseconds per call of ``fn`` over ``items`` (each round: ``n`` calls)."""
    reps = max(1, n // len(items))
    best = float("inf")
    gc.collect()
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            for item in items:
                fn(item)
        best = min(best, (time.perf_counter() - start) / (reps * len(items)))
    return best * 1e6


def _library_rows(events: list[dict[str, Any]], n: int, rounds: int) -> list[dict[str, Any]]:
    strict_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def std_dumps(value: Any) -> bytes:
        return strict_encoder.encode(value).encode("utf-8")

    bodies = [orjson.dumps(e) for e in events]
    write = {
        "stdlib json": std_dumps,
        "orjson": orjson.dumps,
        "msgspec": msgspec.json.Encoder().encode,
    }
    read = {
        "stdlib json": lambda b: strictjson._DECODER.decode(b.decode("utf-8")),
        "orjson": orjson.loads,
        "msgspec": msgspec.json.Decoder().decode,
    }
    rows = []
    for what, table, items in (("write", write, events), ("read", read, bodies)):
        timings = {name: _per_op(fn, items, n, rounds) for name, fn in table.items()}
        base = timings["stdlib json"]
        for name in ("orjson", "msgspec"):
            rows.append(
                result(
                    f"codec: JSON {what} of an envelope, {name}",
                    timings[name],
                    "us/envelope",
                    "stdlib json, same run",
                    base,
                    higher_is_better=False,
                )
            )
    return rows


def _codec_rows(
    pairs: list[tuple[Message, DeliveryOptions]], n: int, rounds: int
) -> list[dict[str, Any]]:
    bodies = [encode(m, o) for m, o in pairs]
    saved = strictjson.FAST_DUMPS, strictjson.FAST_LOADS
    timings: dict[tuple[str, bool], float] = {}
    try:
        for i in range(rounds):  # alternate the settings: a noisy neighbour hits both
            for fast in (True, False) if i % 2 else (False, True):
                strictjson.FAST_DUMPS, strictjson.FAST_LOADS = saved if fast else (None, None)
                for what, fn, items in (
                    ("encode", lambda p: encode(*p), pairs),
                    ("decode", decode, bodies),
                ):
                    t = _per_op(fn, items, n, 1)
                    timings[what, fast] = min(timings.get((what, fast), t), t)
    finally:
        strictjson.FAST_DUMPS, strictjson.FAST_LOADS = saved
    return [
        result(
            f"codec: {what}() of an envelope, orjson out + msgspec in",
            timings[what, True],
            "us/envelope",
            "same codec, stdlib json only",
            timings[what, False],
            higher_is_better=False,
        )
        for what in ("encode", "decode")
    ]


async def run(quick: bool) -> list[dict[str, Any]]:
    """Measure and return the rows."""
    n, rounds = (6_000, 3) if quick else (60_000, 7)
    pairs = _envelopes()
    events = [json.loads(encode(m, o)) for m, o in pairs]
    return _library_rows(events, n, rounds) + _codec_rows(pairs, n, rounds)
