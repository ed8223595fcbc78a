"""Polling for an effect another task or process brings about, bounded in real time."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable

__all__ = ["eventually"]


async def eventually(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition"
) -> None:
    """Return once ``predicate()`` (a bool, or an awaitable of one) is true; fail with
    ``AssertionError`` naming ``what`` after ``timeout`` seconds."""
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
        await asyncio.sleep(0.01)
