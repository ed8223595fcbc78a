"""The node's admin JSON API and its web dashboard, on any aiohttp application.

:func:`install_dashboard` adds, to an ``aiohttp.web.Application`` (a
:class:`~AgentOperatingSystem.messaging.network.node.NetworkProtocol` node's ``app``, or
your own):

``GET /dashboard/``
    A page (plain HTML/JS/CSS served from this package, no CDN) with the agents and their
    queue depths, the dead-letter queue (reason, last error, a *Resubmit* button), a live
    message stream and a conversation viewer.
``/admin/...``
    The JSON API the page and the ``aos-messaging`` command line use:

    ===========================================  ==========================================
    ``GET  /admin/info``                          node, engine, bus id
    ``GET  /admin/queues[?all=1]``                agents: depth, dead letters, subscribed
    ``GET  /admin/stats``                         counters per agent (when metrics are on)
    ``GET  /admin/dlq[?agent=A&limit=N]``         dead letters with reason and last error
    ``GET  /admin/dlq/{agent}/{message_id}``      one dead letter in full
    ``POST /admin/dlq/{agent}/{message_id}/resubmit``  put it back into its queue
    ``POST /admin/dlq/{agent}/purge``             delete the agent's dead letters
    ``POST /admin/send``                          publish a message (JSON fields of Message)
    ``POST /admin/request``                       request/response, waits for the answer
    ``GET  /admin/tail[?agent=A&type=T]``         live events (Server-Sent Events)
    ``GET  /admin/conversations[?state=&participant=]``  conversations
    ``GET  /admin/conversations/{id}[?limit=N]``  one conversation with its turns
    ===========================================  ==========================================

Errors are JSON ``{"error": {"type": ..., "message": ...}}`` with a 4xx/5xx status.

**Access.** With ``token`` (default: ``$AOS_ADMIN_TOKEN``) every route here requires it, as
``Authorization: Bearer <token>``, the cookie ``aos_admin_token`` (set when the page is
opened as ``/dashboard/?token=...``) or the query parameter ``token``. POST routes accept only
``Content-Type: application/json`` and refuse a foreign ``Origin``, so a web page on another
site cannot drive them from a visitor's browser. Without a token, bind the node to
127.0.0.1 (the default) or put it behind an authenticating proxy.

This module installs the routes, guards them and serves the page; the ``/admin`` handlers
are in :mod:`.admin`, the live stream in :mod:`.events` and the JSON conventions (error
bodies, parameters) in :mod:`.jsonapi`.
"""

from __future__ import annotations

import hmac
import logging
import os
from importlib import resources
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import MessagingError
from ..observability.bus_telemetry import telemetry_for
from .admin import AdminAPI, message_to_dict
from .events import EventHub
from .jsonapi import HTTPError, error_response, status_of

__all__ = [
    "ADMIN_TOKEN_ENV",
    "EventHub",
    "install_dashboard",
    "message_to_dict",
]

log = logging.getLogger("aos.messaging.dashboard")

ADMIN_TOKEN_ENV = "AOS_ADMIN_TOKEN"
"""The environment variable holding the admin token when none is passed."""
_COOKIE = "aos_admin_token"
_STATIC = {
    "dashboard.html": "text/html",
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
}
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:"
    ),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ADMIN_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/admin/info", "info"),
    ("GET", "/admin/queues", "queues"),
    ("GET", "/admin/stats", "stats"),
    ("GET", "/admin/dlq", "dlq_list"),
    ("GET", "/admin/dlq/{agent}/{message_id}", "dlq_show"),
    ("POST", "/admin/dlq/{agent}/{message_id}/resubmit", "dlq_resubmit"),
    ("POST", "/admin/dlq/{agent}/purge", "dlq_purge"),
    ("POST", "/admin/send", "send"),
    ("POST", "/admin/request", "request"),
    ("GET", "/admin/tail", "tail"),
    ("GET", "/admin/conversations", "conversations"),
    ("GET", "/admin/conversations/{conversation_id}", "conversation"),
)
"""Method, path and :class:`~.admin.AdminAPI` handler of every ``/admin`` route."""


def install_dashboard(
    app: web.Application,
    bus: Any,
    storage: Any = None,
    *,
    token: str | None = None,
    node_info: dict[str, Any] | None = None,
) -> EventHub:
    """Add the dashboard page and the ``/admin`` JSON API for ``bus`` to ``app``.

    ``storage`` is a :class:`~AgentOperatingSystem.storage.manager.StorageManager` (or a
    ready :class:`~.conversation_system.ConversationSystem`) whose conversations the page
    shows (default: ``bus.storage`` when it is one). ``token`` protects every route (default
    ``$AOS_ADMIN_TOKEN``; none: open). ``node_info`` is merged into ``/admin/info``.
    The live stream needs the bus's telemetry: a bus without one gets a
    :class:`~.observability.BusTelemetry` (metrics on, tracing as configured).
    Returns the :class:`EventHub` behind ``/admin/tail``.
    """
    secret = token if token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None
    hub = EventHub(telemetry_for(bus))
    api = AdminAPI(bus, storage, hub, node_info or {})

    r = app.router
    r.add_get("/dashboard", _guard(_redirect_page, secret, page=True))
    r.add_get("/dashboard/", _guard(_page, secret, page=True))
    r.add_get("/dashboard/static/{name}", _guard(_static, secret, page=True))
    add = {"GET": r.add_get, "POST": r.add_post}
    for method, path, name in _ADMIN_ROUTES:
        add[method](path, _guard(getattr(api, name), secret))

    async def on_shutdown(_app: web.Application) -> None:
        hub.close()

    app.on_shutdown.append(on_shutdown)
    return hub


def _guard(handler: Handler, secret: str | None, *, page: bool = False) -> Handler:
    """``handler`` behind the token check and the POST rules, with errors as JSON."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        if secret is not None and not _authorized(request, secret):
            if page:
                return web.Response(
                    status=401,
                    text="401: open this page as /dashboard/?token=<admin token>\n",
                )
            return error_response(401, "Unauthorized", "missing or wrong admin token")
        if request.method == "POST":
            refused = _refuse_post(request)
            if refused is not None:
                return refused
        try:
            response = await handler(request)
        except HTTPError as exc:
            return error_response(exc.status, exc.kind, exc.message)
        except MessagingError as exc:
            return error_response(status_of(exc), type(exc).__name__, str(exc))
        if page and secret is not None and request.query.get("token"):
            response.set_cookie(_COOKIE, secret, httponly=True, samesite="Strict")
        return response

    return wrapped


def _refuse_post(request: web.Request) -> web.Response | None:
    """The answer refusing a POST that is not JSON or comes from another site, else None."""
    if request.content_type != "application/json":
        return error_response(415, "UnsupportedMediaType", "POST bodies must be application/json")
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        return error_response(403, "Forbidden", f"cross-origin request from {origin}")
    return None


def _authorized(request: web.Request, secret: str) -> bool:
    given: list[str] = []
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given.append(header[len("Bearer ") :].strip())
    cookie = request.cookies.get(_COOKIE)
    if cookie:
        given.append(cookie)
    query = request.query.get("token")
    if query:
        given.append(query)
    want = secret.encode()
    return any(hmac.compare_digest(g.encode(), want) for g in given)


# ---------------------------------------------------------------------------- the page


async def _redirect_page(request: web.Request) -> web.StreamResponse:
    query = f"?{request.query_string}" if request.query_string else ""
    raise web.HTTPFound(f"/dashboard/{query}")


async def _page(request: web.Request) -> web.StreamResponse:
    return _file("dashboard.html")


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise HTTPError(404, "NotFound", f"no static file {name!r}")
    return _file(name)


def _file(name: str) -> web.Response:
    """A file of ``static/``, read with importlib.resources from this package."""
    data = resources.files(__package__).joinpath("static", name).read_bytes()
    return web.Response(
        body=data, content_type=_STATIC[name], charset="utf-8", headers=_PAGE_HEADERS
    )
