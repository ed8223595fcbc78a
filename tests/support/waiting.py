"""Polling for an effect another task or process brings about, bounded in real time.

* :func:`eventually` (async): for effects of tasks on the running loop or of other processes.
* :func:`wait_until` (blocking): for tests that are not coroutines, e.g. waiting for a child
  process to signal that it is ready.

Each predicate may raise (an ``assert`` inside it fails the test at once, e.g. when the
process it waits for has died).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable

__all__ = ["eventually", "wait_until"]

_STEP = 0.01


async def eventually(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "the condition",
    *,
    interval: float = _STEP,
) -> None:
    """Return once ``predicate()`` (a bool, or an awaitable of one) is true; fail with
    ``AssertionError`` naming ``what`` after ``timeout`` seconds. It is asked every
    ``interval`` seconds (longer for a predicate that is costly to ask)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition"
) -> None:
    """Block until ``predicate()`` is true; fail with ``AssertionError`` naming ``what``
    after ``timeout`` seconds. Not for use inside a running event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(_STEP)
