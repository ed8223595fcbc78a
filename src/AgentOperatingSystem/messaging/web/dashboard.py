"""The node's admin JSON API and its web dashboard, on any aiohttp application.

:func:`install_dashboard` adds, to an ``aiohttp.web.Application`` (a
:class:`~AgentOperatingSystem.messaging.network.node.NetworkProtocol` node's ``app``, or
your own):

``GET /dashboard/``
    A page (plain HTML/JS/CSS served from this package, no CDN) with the agents and their
    queue depths, the dead-letter queue (reason, last error, a *Resubmit* button), a live
    message stream and a conversation viewer.
``/admin/...``
    The JSON API the page and the ``aos-messaging`` command line use. Every route is in
    the table of :mod:`.routes`, which both registers it and describes it in the OpenAPI
    3.1 document served at ``GET /admin/openapi.json``: info, queues, stats, sampled series,
    dead letters (filtered, counted, resubmitted or purged in bulk, one by one), send,
    request, the live tail, causation traces, conversations and their timelines.

Errors are JSON ``{"error": {"type": ..., "message": ...}}`` with a 4xx/5xx status.

**Access.** With ``token`` (default: ``$AOS_ADMIN_TOKEN``) every route here requires it, as
``Authorization: Bearer <token>``, the cookie ``aos_admin_token`` (set when the page is
opened as ``/dashboard/?token=...``) or the query parameter ``token``. POST routes accept only
``Content-Type: application/json`` and refuse a foreign ``Origin``, so a web page on another
site cannot drive them from a visitor's browser. Without a token, bind the node to
127.0.0.1 (the default) or put it behind an authenticating proxy.

This module installs the routes, guards them and serves the page; the ``/admin`` handlers
are in :mod:`.admin`, :mod:`.deadletters`, :mod:`.sampler` (charts over time),
:mod:`.traces` (causation and timelines, from :mod:`.recorder`) and :mod:`.openapi`; the
live stream is in :mod:`.events` and the JSON conventions in :mod:`.jsonapi`.
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
from ..network.a2a.desk import TaskDesk
from ..observability.bus_telemetry import telemetry_for
from .admin import AdminAPI, message_to_dict
from .deadletters import DeadLetterAPI
from .events import EventHub
from .inbox import TaskInbox
from .jsonapi import HTTPError, error_response, status_of
from .openapi import OpenAPIDocument
from .recorder import MessageRecorder
from .routes import ADMIN_ROUTES
from .sampler import DEFAULT_CAPACITY, DEFAULT_INTERVAL, SeriesSampler
from .traces import TraceAPI

__all__ = [
    "ADMIN_TOKEN_ENV",
    "SAMPLER",
    "EventHub",
    "install_dashboard",
    "message_to_dict",
]

log = logging.getLogger("aos.messaging.dashboard")

ADMIN_TOKEN_ENV = "AOS_ADMIN_TOKEN"
"""The environment variable holding the admin token when none is passed."""
SAMPLER = web.AppKey("aos_dashboard_sampler", SeriesSampler)
"""The app key of the dashboard's :class:`~.sampler.SeriesSampler`."""
_COOKIE = "aos_admin_token"
_STATIC = {
    "dashboard.html": "text/html",
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
    "charts.js": "application/javascript",
    "views.js": "application/javascript",
}
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:"
    ),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def install_dashboard(
    app: web.Application,
    bus: Any,
    storage: Any = None,
    *,
    token: str | None = None,
    node_info: dict[str, Any] | None = None,
    record: bool = False,
    sample_interval: float = DEFAULT_INTERVAL,
    sample_capacity: int = DEFAULT_CAPACITY,
    tasks: TaskDesk | None = None,
) -> EventHub:
    """Add the dashboard page and the ``/admin`` JSON API for ``bus`` to ``app``.

    ``storage`` is a :class:`~AgentOperatingSystem.storage.manager.StorageManager` (or a
    ready :class:`~.conversation_system.ConversationSystem`) whose conversations the page
    shows (default: ``bus.storage`` when it is one). ``token`` protects every route (default
    ``$AOS_ADMIN_TOKEN``; none: open). ``node_info`` is merged into ``/admin/info``.
    The live stream needs the bus's telemetry: a bus without one gets a
    :class:`~.observability.BusTelemetry` (metrics on, tracing as configured).
    The node records the messages it sees (for ``/admin/trace`` and the timelines) while
    a page or stream client is connected, or always with ``record=True``; it samples the
    bus every ``sample_interval`` seconds, keeping ``sample_capacity`` samples per agent.
    ``tasks`` (the node's A2A :class:`~..network.a2a.desk.TaskDesk`) feeds the inbox of
    tasks parked for input.
    Returns the :class:`EventHub` behind ``/admin/tail``.
    """
    secret = token if token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None
    hub = EventHub(telemetry_for(bus))
    api = AdminAPI(bus, storage, hub, node_info or {})
    recorder = MessageRecorder()
    hub.observe(recorder)
    if record:
        hub.pin()
    sampler = SeriesSampler(hub.telemetry, bus, interval=sample_interval, capacity=sample_capacity)
    owners: dict[str, Any] = {
        "admin": api,
        "dlq": DeadLetterAPI(bus, hub),
        "series": sampler,
        "trace": TraceAPI(bus, recorder, api.conversation_system),
        "inbox": TaskInbox(tasks),
        "openapi": OpenAPIDocument(secured=secret is not None),
    }

    r = app.router
    r.add_get("/dashboard", _guard(_redirect_page, secret, page=True))
    r.add_get("/dashboard/", _guard(_page, secret, page=True))
    r.add_get("/dashboard/static/{name}", _guard(_static, secret, page=True))
    add = {"GET": r.add_get, "POST": r.add_post}
    for route in ADMIN_ROUTES:
        add[route.method](route.path, _guard(getattr(owners[route.owner], route.handler), secret))

    async def on_startup(_app: web.Application) -> None:
        sampler.start()

    async def on_shutdown(_app: web.Application) -> None:
        hub.close()
        await sampler.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app[SAMPLER] = sampler
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
