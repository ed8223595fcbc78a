"""``SendStreamingMessage`` over server-sent events: the task as it starts, then each of its
events (status and artifact updates) as a JSON-RPC result frame, until a terminal state;
a comment line keeps an idle stream open."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable

from aiohttp import web

from ..wire import dumps, log
from .rpc import rpc_result
from .tasks import TERMINAL, A2ATask, render_event

__all__ = ["KEEPALIVE_SECONDS", "stream_task"]

#: Seconds of silence after which a keep-alive comment is sent.
KEEPALIVE_SECONDS = 15.0


async def stream_task(
    request: web.Request,
    request_id: Any,
    task: A2ATask,
    legacy: bool,
    start: Callable[[], object],
) -> web.StreamResponse:
    """Stream ``task`` to the client of ``request``; ``start()`` starts the task once the
    stream listens to it (so no event is missed)."""
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    task.listeners.append(events)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )

    def frame(result: dict[str, Any]) -> bytes:
        return b"data: " + dumps(rpc_result(request_id, result)) + b"\n\n"

    snapshot = task.render(legacy)
    start()
    try:
        await resp.prepare(request)
        await resp.write(frame(snapshot if legacy else {"task": snapshot}))
        while True:
            try:
                event = await asyncio.wait_for(events.get(), timeout=KEEPALIVE_SECONDS)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            await resp.write(frame(render_event(task, event, legacy)))
            if event[0] == "status" and event[1][0] in TERMINAL:
                break
        await resp.write_eof()
    except ConnectionResetError:
        log.info("A2A stream for task %s closed by the client", task.id)
    finally:
        with contextlib.suppress(ValueError):
            task.listeners.remove(events)
    return resp
