"""``GET /admin/openapi.json``: the OpenAPI 3.1 document of the admin API.

Built from the route table (:data:`.routes.ADMIN_ROUTES`) and the component schemas
(:data:`.schemas.COMPONENTS`), the same table the routes are registered from.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .routes import ADMIN_ROUTES, Route
from .schemas import COMPONENTS, ref

__all__ = ["OpenAPIDocument", "openapi_document"]

_ERROR_TEXT = {
    400: "Bad request (parameter or body)",
    401: "Missing or wrong admin token",
    403: "Forbidden (access control, or a cross-origin POST)",
    404: "Not found",
    409: "Conflict: the action cannot be done as asked",
    415: "POST bodies must be application/json",
    422: "No route for the message",
    501: "Not available on this node",
    502: "The request failed at the responder",
    503: "The queue is full",
    504: "No answer in time",
}


def _operation(route: Route, secured: bool) -> dict[str, Any]:
    op_id = route.handler if route.owner != "openapi" else "openapi"
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.params:
        op["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "schema": p.schema,
                **({"description": p.description} if p.description else {}),
            }
            for p in route.params
        ]
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(route.body)}},
        }
    if route.stream:
        ok = {
            "description": "Server-Sent Events, one JSON event per ``data:`` line",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    else:
        ok = {
            "description": "OK",
            "content": {"application/json": {"schema": ref(route.response)}},
        }
    responses: dict[str, Any] = {"200": ok}
    codes = set(route.errors)
    if secured:
        codes.add(401)
    for code in sorted(codes):
        responses[str(code)] = {
            "description": _ERROR_TEXT.get(code, "Error"),
            "content": {"application/json": {"schema": ref("Error")}},
        }
    op["responses"] = responses
    return op


def openapi_document(
    *, secured: bool = True, title: str = "AOS Messaging admin API", version: str = "1"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every ``/admin`` route.

    ``secured``: the routes require the bearer token (it is then the document's global
    ``security`` requirement and every operation lists its 401)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ADMIN_ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, secured)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "The JSON API of an AOS Messaging node's dashboard and command line. "
                'Errors are {"error": {"type", "message"}}. POST bodies must be '
                "application/json; a cross-origin POST is refused."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The node's admin token ($AOS_ADMIN_TOKEN)",
                }
            },
        },
    }
    if secured:
        doc["security"] = [{"bearer": []}]
    return doc


class OpenAPIDocument:
    """The handler of ``GET /admin/openapi.json`` (the document is built once)."""

    def __init__(self, secured: bool) -> None:
        self._doc = openapi_document(secured=secured)

    async def document(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/openapi.json``."""
        return web.json_response(self._doc)
