"""Security overhead, each figure beside the plain path measured in the same run.

The baseline is the in-memory publish -> handler path with no signing and no encryption
(the memory engine then hands the Message object over without encoding it). Against it:

* signing: ``sign_messages=True`` and ``require_signatures=True`` (Ed25519 sign at publish,
  verify before the handler; the envelope is encoded and decoded so the signature is checked
  on what travelled);
* encryption: ``publish(encrypt=True, encryption_key=...)`` (AES-256-GCM seal and open);
* both together.

Each value is microseconds per message (lower is better); ``ratio`` is value / baseline.
Runs alternate between the settings and each keeps its best run, so a noisy neighbour on a
shared machine does not decide the ratio.

    python -m benchmarks.run --only security [--quick]
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

from AgentOperatingSystem.config.messagebus import MessageBusConfig
from AgentOperatingSystem.messaging.bus import MessageBus
from AgentOperatingSystem.messaging.types import Message, MessageType
from benchmarks.common import result

_BASELINE = "memory publish->handler, unsigned, unencrypted (us/msg)"
_KEY = os.urandom(32)


async def _per_message(n: int, *, sign: bool, encrypt: bool) -> float:
    """Microseconds per message from the first publish to the last handler call."""
    count = 0
    done = asyncio.Event()

    def handler(message: Message) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    config = MessageBusConfig(
        broker_url="memory://",
        storage_url="memory://",
        max_queue_size=n + 1,
        prefetch=256,
        sign_messages=sign,
        require_signatures=sign,
    )
    messages = [
        Message(
            message_type=MessageType.TASK,
            sender_id="bench",
            recipient_id="sink",
            content={"i": i, "task": "analyze_quarterly_report", "data": {"quarter": "Q2"}},
        )
        for i in range(n)
    ]
    extra: dict[str, Any] = {"encrypt": True, "encryption_key": _KEY} if encrypt else {}
    gc.collect()
    async with MessageBus(config) as bus:
        if sign:
            await bus.register_agent_keys("bench")
        await bus.subscribe("sink", [MessageType.TASK], handler)
        start = time.perf_counter()
        for message in messages:
            await bus.publish(message, **extra)
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - start
        if sign:
            assert bus.verify_sender(messages[-1]), "the benchmark did not sign"
    return elapsed / n * 1e6


async def run(quick: bool) -> list[dict[str, Any]]:
    """Signing and encryption cost per message, as ratios to the plain memory path."""
    n = 1000 if quick else 10_000
    rounds = 2 if quick else 4
    settings = {
        "plain": (False, False),
        "signing": (True, False),
        "encryption": (False, True),
        "signing+encryption": (True, True),
    }
    best: dict[str, float] = {}
    for sign, encrypt in settings.values():  # warm-up: imports, key generation
        await _per_message(min(n, 300), sign=sign, encrypt=encrypt)
    for i in range(rounds):
        order = list(settings.items())
        if i % 2:
            order.reverse()
        for name, (sign, encrypt) in order:
            value = await _per_message(n, sign=sign, encrypt=encrypt)
            best[name] = min(best.get(name, value), value)
    base = best["plain"]
    rows = [
        result(
            "security.signing_per_message",
            best["signing"],
            "us/msg",
            _BASELINE,
            base,
            higher_is_better=False,
        ),
        result(
            "security.encryption_per_message",
            best["encryption"],
            "us/msg",
            _BASELINE,
            base,
            higher_is_better=False,
        ),
        result(
            "security.signing_and_encryption_per_message",
            best["signing+encryption"],
            "us/msg",
            _BASELINE,
            base,
            higher_is_better=False,
        ),
    ]
    return rows


if __name__ == "__main__":
    import json

    for row in asyncio.run(run(quick=True)):
        print(json.dumps(row))
