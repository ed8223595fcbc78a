"""The CloudEvents HTTP binding on a node: foreign producers (webhooks, Knative, Dapr, any
CloudEvents SDK) deliver events to an agent hosted here.

Route
-----
``POST /aos/v1/agents/{agent_id}/events`` (:data:`EVENTS_PATH`) takes one CloudEvent 1.0 for
the hosted agent ``agent_id``, in either content mode of the CloudEvents HTTP protocol
binding, or a batch:

* **binary mode** -- the context attributes are ``ce-`` headers (``ce-specversion``,
  ``ce-id``, ``ce-source``, ``ce-type``, ...; values percent-decoded as UTF-8), the body is
  the event's data and ``Content-Type`` its media type (JSON is parsed, ``text/*`` read as
  text, anything else kept as base64; without a ``Content-Type``, as CloudEvents SDKs send
  an event without ``datacontenttype``, data that is JSON is read as JSON);
* **structured mode** -- ``Content-Type: application/cloudevents+json``, the body is the
  whole event as JSON;
* **batched mode** -- ``Content-Type: application/cloudevents-batch+json``, a JSON array of
  up to ``MAX_BATCH_MESSAGES`` structured events.

The event becomes a :class:`~AgentOperatingSystem.messaging.types.Message` by
:func:`~AgentOperatingSystem.messaging.codec.envelope.decode_cloudevent`: a type
``aos.<message type>`` gives that type, any other type an ``EVENT`` whose content is
``{"type": <CloudEvents type>, "data": <data>}``, and the context attributes are in
``metadata["cloudevents"]``; the sender id is the event's ``source``. The recipient is
``agent_id``. A foreign event's message id is derived from its ``source`` and ``id`` (a
name-based UUID, :func:`foreign_message_id`), so a redelivered event is delivered once
within the bus's dedup window and two producers' ids never collide (the CloudEvents rule:
``source`` + ``id`` identify an event). A structured event with ``aos*`` attributes is an
AOS envelope and is read strictly; its ``aosrecipient``, when set, must be ``agent_id``.

Answers: ``202 {"accepted": true, "duplicate": false}`` (``"duplicate": true`` when the
event had arrived already), and errors as ``{"error": {"code", "message"}}``: ``400
bad_request`` (not a CloudEvent, malformed, or not readable here; nothing is published),
``401 unauthorized``, ``404 unknown_agent`` (this node does not host ``agent_id``), ``413
payload_too_large`` (a body over ``max_body_bytes``, a batch over ``MAX_BATCH_MESSAGES``),
``415 unsupported_media_type`` (a structured format other than JSON), ``503
queue_full``/``unavailable``. A batch is decoded whole before anything is published (one bad
event: ``400``, naming it); it is answered ``202 {"accepted": true, "results": [...]}`` (one
``{"id", "status", "duplicate" | "error"}`` per event, in order) when every event is in,
else with the first refusal's status and the same results: sending the batch again is safe,
as the events already in are recognised as duplicates.

``OPTIONS`` on the same path answers ``200`` with ``Allow: OPTIONS, POST``, and to the
CloudEvents Web Hook validation handshake (``WebHook-Request-Origin``) with
``WebHook-Allowed-Origin`` and ``WebHook-Allowed-Rate: *``; it tells nothing about agents.

Authentication
--------------
A webhook sender has no AOS signature, so the route takes a bearer token,
``NetworkConfig.cloudevents_token``: ``Authorization: Bearer <token>``, or the query
parameter ``?access_token=<token>`` for senders that cannot set headers (a Knative
subscriber URI; the URL then holds the token, so keep it out of logs). Without a token
configured every request is refused (``401``), unless ``allow_unsigned`` is True (local
development only), when the route is open. The token is checked before anything else, so a
caller without it learns nothing about which agents are hosted. The token admits a
producer, not a sender: the sender id of a foreign event is the ``source`` it claims, so
access rules keyed on sender ids see that claim (give the token only to producers trusted
with every ``source`` they may write).
"""

from __future__ import annotations

import hmac
import re
import uuid
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import unquote_to_bytes

from aiohttp import web
from multidict import CIMultiDictProxy

from ...config.network import NetworkConfig
from ..codec.envelope import decode_batch, decode_cloudevent, is_aos_event
from ..codec.strictjson import loads
from ..errors import DecodeError, DecryptionError, error_text
from ..policy import DeliveryOptions
from ..types import Message
from .intake import Intake, Outcome, Refusal, batch_result
from .registry import AgentInfo
from .wire import (
    API_PREFIX,
    CLOUDEVENTS_BATCH,
    CLOUDEVENTS_JSON,
    MAX_BATCH_MESSAGES,
    BodyTooLarge,
    accepted_response,
    dumps,
    error_response,
    log,
    read_body,
)

__all__ = ["EVENTS_PATH", "CloudEventsEndpoint", "binary_attributes", "foreign_message_id"]

#: The route of the CloudEvents HTTP binding (``agent_id`` percent-encoded as one segment).
EVENTS_PATH = f"{API_PREFIX}/agents/{{agent_id}}/events"
_STRUCTURED = "application/cloudevents"
_JSON = "application/json"
_ATTRIBUTE = re.compile(r"[a-z0-9]+")
#: The namespace of :func:`foreign_message_id` (a fixed, random UUID).
_ID_NAMESPACE = uuid.UUID("6f1e2c5a-93d4-4b7e-a0c2-5d8f1b7e3a90")
_BEARER = {"WWW-Authenticate": "Bearer"}

#: The look-up of an agent hosted on this node (None when it is not).
HostedLookup = Callable[[str], Awaitable[AgentInfo | None]]


def foreign_message_id(source: str, event_id: str) -> str:
    """The message id of a foreign event: a UUID named by its ``source`` and ``id``, the
    pair that identifies a CloudEvent (the same pair always gives the same id)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{len(source)}:{source}{event_id}"))


def binary_attributes(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The context attributes of a binary-mode request: each ``ce-<name>`` header as
    ``<name>`` (lower-case), its value percent-decoded as UTF-8. :class:`Refusal` (400) for
    a header given twice, a name that is not lower-case letters and digits, or a value that
    is not percent-encoded UTF-8."""
    out: dict[str, str] = {}
    for header, value in headers.items():
        if len(header) <= 3 or header[:3].lower() != "ce-":
            continue
        name = header[3:].lower()
        if _ATTRIBUTE.fullmatch(name) is None:
            raise Refusal(
                400,
                "bad_request",
                f"header {header!r} names no CloudEvents attribute"
                " (attribute names are lower-case letters and digits)",
            )
        if name in out:
            raise Refusal(400, "bad_request", f"header ce-{name} is given more than once")
        out[name] = _percent_decoded(value, header)
    return out


def _percent_decoded(value: str, header: str) -> str:
    """``value`` with its ``%XX`` escapes decoded as UTF-8, or :class:`Refusal` (400)."""
    if "%" not in value and value.isascii():
        return value
    try:
        return unquote_to_bytes(value.encode("utf-8", "surrogateescape")).decode("utf-8")
    except UnicodeError:
        raise Refusal(
            400, "bad_request", f"header {header!r} is not percent-encoded UTF-8"
        ) from None


class CloudEventsEndpoint:
    """Serves :data:`EVENTS_PATH`: CloudEvents from foreign producers, published on the
    node's bus (through ``intake``, deduplicated) for agents ``hosted`` here. The module's
    docstring gives the route, the answers and the authentication."""

    def __init__(self, config: NetworkConfig, intake: Intake, hosted: HostedLookup) -> None:
        self.config = config
        self.intake = intake
        self.hosted = hosted

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """``POST`` and ``OPTIONS`` on :data:`EVENTS_PATH`."""
        router.add_post(EVENTS_PATH, self.on_post)
        router.add_route("OPTIONS", EVENTS_PATH, self.on_options)

    # ------------------------------------------------------------------ requests

    async def on_options(self, request: web.Request) -> web.StreamResponse:
        """The delivery probe and the Web Hook validation handshake."""
        headers = {"Allow": "OPTIONS, POST"}
        origin = request.headers.get("WebHook-Request-Origin")
        if origin:
            headers["WebHook-Allowed-Origin"] = origin
            headers["WebHook-Allowed-Rate"] = "*"
        return web.Response(status=200, headers=headers)

    async def on_post(self, request: web.Request) -> web.StreamResponse:
        """One event (binary or structured mode) or a batch, for ``agent_id``."""
        try:
            denied = self._refuse(request)
            if denied is not None:
                return denied
            agent_id = request.match_info["agent_id"]
            if await self.hosted(agent_id) is None:
                return error_response(
                    404, "unknown_agent", f"this node does not host agent {agent_id!r}"
                )
            try:
                body = await read_body(request, self.config.server.max_body_bytes)
            except BodyTooLarge as exc:
                return error_response(413, "payload_too_large", str(exc))
            try:
                if _media(request.headers) == CLOUDEVENTS_BATCH:
                    return await self._accept_batch(agent_id, body)
                message, options = self._decode(agent_id, request.headers, body)
            except Refusal as refused:
                status, code, text, _ = refused.outcome
                return error_response(status, code, text)
            status, code, text, duplicate = await self.intake.publish(message, options)
            if status == 202:
                return accepted_response(duplicate)
            return error_response(status, code, text)
        except ConnectionError:  # the client went away: the server's guard logs it quietly
            raise
        except Exception as exc:  # never let a request take the node down
            log.exception("handling an incoming CloudEvent failed")
            return error_response(500, "internal_error", error_text(exc))

    def _refuse(self, request: web.Request) -> web.Response | None:
        """The ``401`` answer to a request without the bearer token, or None."""
        auth = self.config.auth
        token = auth.cloudevents_token
        if token is None:
            if auth.allow_unsigned:
                return None
            return error_response(
                401,
                "unauthorized",
                "this node has no cloudevents_token configured: CloudEvents requests are refused",
                **_BEARER,
            )
        given = request.headers.get("Authorization")
        if given is not None:
            scheme, _, credentials = given.partition(" ")
            given = credentials.strip() if scheme.lower() == "bearer" else None
        else:
            given = request.query.get("access_token")
        if given is None:
            return error_response(
                401, "unauthorized", "missing bearer token (Authorization: Bearer)", **_BEARER
            )
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
            return error_response(401, "unauthorized", "invalid bearer token", **_BEARER)
        return None

    # ------------------------------------------------------------------ decoding

    def _decode(
        self, agent_id: str, headers: CIMultiDictProxy[str], body: bytes
    ) -> tuple[Message, DeliveryOptions]:
        """The message of one event in binary or structured mode; :class:`Refusal`."""
        media = _media(headers)
        if media.startswith(_STRUCTURED):
            if media != CLOUDEVENTS_JSON:
                raise Refusal(
                    415,
                    "unsupported_media_type",
                    f"structured mode {media!r} is not supported: use {CLOUDEVENTS_JSON}",
                )
            try:
                event = loads(body)
            except (ValueError, RecursionError) as exc:
                raise Refusal(
                    400, "bad_request", f"not a valid CloudEvent: not JSON: {exc}"
                ) from exc
            return self._structured(agent_id, event)
        if "ce-specversion" not in headers:
            raise Refusal(
                400,
                "bad_request",
                "not a CloudEvent: no ce-specversion header (binary mode) and Content-Type is"
                f" not {CLOUDEVENTS_JSON} (structured mode)",
            )
        attributes = binary_attributes(headers)
        carried = attributes.pop("datacontenttype", None)  # Content-Type carries it
        content_type = headers.get("Content-Type") or carried
        sniffed = content_type is None and bool(body) and _is_json(body)
        message, options = self._read(
            lambda keys: decode_cloudevent(
                body,
                attributes=attributes,
                content_type=_JSON if sniffed else content_type,
                message_id=_identity(attributes),
                recipient=agent_id,
                max_bytes=self.config.server.max_body_bytes,
                keys=keys,
            ),
            agent_id,
        )
        if sniffed:  # the event had no datacontenttype: say so, as it came
            message.metadata["cloudevents"].pop("datacontenttype", None)
        return message, options

    def _structured(self, agent_id: str, event: Any) -> tuple[Message, DeliveryOptions]:
        """The message of one parsed structured-mode event; :class:`Refusal`."""
        if not isinstance(event, dict):
            raise Refusal(400, "bad_request", "not a valid CloudEvent: not a JSON object")
        message_id = None if is_aos_event(event) else _identity(event)
        return self._read(
            lambda keys: decode_cloudevent(
                event,
                message_id=message_id,
                recipient=agent_id,
                max_bytes=self.config.server.max_body_bytes,
                keys=keys,
            ),
            agent_id,
        )

    def _read(
        self,
        decode: Callable[[Any], tuple[Message, DeliveryOptions]],
        agent_id: str,
    ) -> tuple[Message, DeliveryOptions]:
        """Run ``decode(keys)`` with the bus's content keys; the message addressed to
        ``agent_id``, or :class:`Refusal` (400)."""
        security = self.intake.bus.security
        keys = security.content_key if security is not None else None
        try:
            message, options = decode(keys)
        except DecryptionError as exc:
            raise Refusal(400, "bad_request", f"content cannot be decrypted here: {exc}") from exc
        except DecodeError as exc:
            raise Refusal(400, "bad_request", f"not a valid CloudEvent: {exc}") from exc
        if message.recipient_id is None:
            message.recipient_id = agent_id
        elif message.recipient_id != agent_id:
            raise Refusal(
                400,
                "bad_request",
                f"the event is for agent {message.recipient_id!r} (aosrecipient) but was"
                f" posted to agent {agent_id!r}",
            )
        return message, options

    # ------------------------------------------------------------------ batches

    async def _accept_batch(self, agent_id: str, body: bytes) -> web.StreamResponse:
        """A batch: every event decoded first (one bad: 400, nothing published), then each
        published; 202 when all are in, else the first refusal's status, with the results."""
        try:
            events = decode_batch(body, max_bytes=self.config.server.max_body_bytes)
        except DecodeError as exc:
            return error_response(400, "bad_request", f"not a CloudEvents batch: {exc}")
        if len(events) > MAX_BATCH_MESSAGES:
            return error_response(
                413, "payload_too_large", f"{len(events)} events; at most {MAX_BATCH_MESSAGES}"
            )
        decoded = []
        for index, event in enumerate(events):
            try:
                decoded.append(self._structured(agent_id, event))
            except Refusal as refused:
                status, code, text, _ = refused.outcome
                return error_response(status, code, f"event {index} of the batch: {text}")
        outcomes: list[Outcome] = [
            await self.intake.publish(message, options) for message, options in decoded
        ]
        results = [batch_result(event, outcome) for event, outcome in zip(events, outcomes)]
        failed = next((o for o in outcomes if o[0] != 202), None)
        if failed is None:
            answer: dict[str, Any] = {"accepted": True, "results": results}
            status = 202
        else:
            status, code, text, _ = failed
            answer = {"error": {"code": code, "message": text}, "results": results}
        return web.Response(status=status, body=dumps(answer), content_type="application/json")


def _media(headers: Mapping[str, str]) -> str:
    """The request's media type, lower-case, without parameters ("" when none)."""
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def _is_json(body: bytes) -> bool:
    """Whether ``body`` is strict JSON (the data of a binary-mode event without a media
    type, as CloudEvents SDKs send a JSON value)."""
    try:
        loads(body)
    except (ValueError, RecursionError):
        return False
    return True


def _identity(attributes: Mapping[str, Any]) -> str | None:
    """:func:`foreign_message_id` of an event's ``source`` and ``id`` (None when either is
    missing or not text: the decoder then says what is wrong)."""
    source, event_id = attributes.get("source"), attributes.get("id")
    if isinstance(source, str) and source and isinstance(event_id, str) and event_id:
        return foreign_message_id(source, event_id)
    return None
