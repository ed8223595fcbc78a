"""Streams over server-sent events (``SendStreamingMessage``, ``SubscribeToTask``): the task
first, then each of its events (status and artifact updates) as a JSON-RPC result frame,
until it is finished or waits for its client (input or authentication); a comment line
keeps an idle stream open. A stream also ends when the node closes (:data:`CLOSE`): the
task itself goes on, in the store."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..wire import dumps, log
from .rpc import rpc_result
from .tasks import INTERRUPTED, TERMINAL, A2ATask, render_event

__all__ = ["CLOSE", "KEEPALIVE_SECONDS", "stream_error", "stream_task"]

#: Seconds of silence after which a keep-alive comment is sent.
KEEPALIVE_SECONDS = 15.0
#: The event that ends a stream without a state change (the node is closing).
CLOSE: tuple[str, Any] = ("close", None)


def _stream_response() -> web.StreamResponse:
    return web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )


async def stream_error(request: web.Request, answer: dict[str, Any]) -> web.StreamResponse:
    """A stream that failed before it began, to a client that accepts only a stream: one
    frame with the JSON-RPC error ``answer``."""
    resp = _stream_response()
    try:
        await resp.prepare(request)
        await resp.write(b"data: " + dumps(answer) + b"\n\n")
        await resp.write_eof()
    except ConnectionResetError:
        log.info("A2A stream error not delivered: the client closed the connection")
    return resp


async def stream_task(
    request: web.Request,
    request_id: Any,
    task: A2ATask,
    legacy: bool,
    start: Callable[[], Awaitable[object]] | None,
    history_length: int | None = None,
    *,
    rest: bool = False,
) -> web.StreamResponse:
    """Stream ``task`` to the client of ``request``; ``start()`` (when given) starts the
    task's turn once the stream listens to it (so no event is missed). Frames are JSON-RPC
    results, or the bare objects when ``rest`` (the HTTP+JSON binding)."""
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    task.listeners.append(events)
    resp = _stream_response()

    def frame(result: dict[str, Any]) -> bytes:
        payload = result if rest else rpc_result(request_id, result)
        return b"data: " + dumps(payload) + b"\n\n"

    try:
        snapshot = task.render(legacy, history_length)
        if start is not None:
            await start()
        await resp.prepare(request)
        await resp.write(frame(snapshot if legacy else {"task": snapshot}))
        while True:
            try:
                event = await asyncio.wait_for(events.get(), timeout=KEEPALIVE_SECONDS)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if event[0] == CLOSE[0]:
                break
            await resp.write(frame(render_event(task, event, legacy)))
            if event[0] == "status" and event[1][0] in TERMINAL | INTERRUPTED:
                break
        await resp.write_eof()
    except ConnectionResetError:
        log.info("A2A stream for task %s closed by the client", task.id)
    finally:
        with contextlib.suppress(ValueError):
            task.listeners.remove(events)
    return resp
