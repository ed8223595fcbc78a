"""The ``/admin`` route table: one entry per route, with what the OpenAPI document says of it.

:func:`~.dashboard.install_dashboard` registers exactly these routes and
:func:`~.openapi.openapi_document` describes exactly these, so the document cannot drift from
the routes (a test checks that every ``/admin`` route the app has is described).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ADMIN_ROUTES", "Param", "Route"]


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter."""

    name: str
    where: str  # "path" or "query"
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """One admin route: ``method path`` served by ``owner.handler``."""

    method: str
    path: str
    owner: str  # which handler object: admin, dlq, series, trace, inbox, openapi
    handler: str
    summary: str
    tag: str
    response: str  # the component schema of the 200 answer
    params: tuple[Param, ...] = ()
    body: str | None = None  # the component schema of the JSON body
    errors: tuple[int, ...] = field(default=(400,))
    stream: bool = False  # answers text/event-stream


_ID = {"type": "string", "minLength": 1, "maxLength": 256}
_AGENT = Param("agent", "path", _ID, "the agent (queue) name")
_MID = Param("message_id", "path", _ID, "the message id")
_CID = Param("conversation_id", "path", _ID, "the conversation id")
_LIMIT = Param(
    "limit", "query", {"type": "integer", "minimum": 1, "maximum": 10_000}, "at most this many"
)
_FILTER = (
    Param("agent", "query", _ID, "only this agent's dead letters"),
    Param("reason", "query", _ID, "only this reason (max_attempts, expired, ...)"),
    Param("since", "query", {"type": "string", "format": "date-time"}, "dead-lettered at/after"),
    Param("until", "query", {"type": "string", "format": "date-time"}, "dead-lettered before"),
)

ADMIN_ROUTES: tuple[Route, ...] = (
    Route("GET", "/admin/openapi.json", "openapi", "document", "This document", "meta", "OpenAPI"),
    Route("GET", "/admin/info", "admin", "info", "Node, engine and bus id", "node", "Info"),
    Route(
        "GET",
        "/admin/queues",
        "admin",
        "queues",
        "Agents: depth, dead letters, subscribed",
        "queues",
        "Queues",
        (Param("all", "query", {"type": "string", "enum": ["0", "1", "true", "yes"]}),),
    ),
    Route("GET", "/admin/stats", "admin", "stats", "Counters per agent", "metrics", "Stats"),
    Route(
        "GET",
        "/admin/series",
        "series",
        "series",
        "Sampled rates, depth and handler latency per agent (the last minutes)",
        "metrics",
        "Series",
        (Param("agent", "query", _ID, "only this agent"),),
    ),
    Route(
        "GET",
        "/admin/dlq",
        "dlq",
        "dlq_list",
        "Dead letters matching a filter, newest last",
        "dead letters",
        "DeadLetters",
        (*_FILTER, _LIMIT),
    ),
    Route(
        "GET",
        "/admin/dlq/count",
        "dlq",
        "dlq_count",
        "How many dead letters a filter selects (the dry run of a bulk action)",
        "dead letters",
        "DeadLetterCount",
        _FILTER,
    ),
    Route(
        "POST",
        "/admin/dlq/resubmit",
        "dlq",
        "dlq_bulk_resubmit",
        "Resubmit every dead letter a filter selects",
        "dead letters",
        "BulkResubmitted",
        body="DeadLetterFilter",
        errors=(400, 415),
    ),
    Route(
        "POST",
        "/admin/dlq/purge",
        "dlq",
        "dlq_bulk_purge",
        "Purge the dead letters a filter selects (whole agents' dead-letter queues)",
        "dead letters",
        "BulkPurged",
        body="DeadLetterFilter",
        errors=(400, 409, 415),
    ),
    Route(
        "GET",
        "/admin/dlq/{agent}/{message_id}",
        "admin",
        "dlq_show",
        "One dead letter in full",
        "dead letters",
        "DeadLetter",
        (_AGENT, _MID),
        errors=(404,),
    ),
    Route(
        "POST",
        "/admin/dlq/{agent}/{message_id}/resubmit",
        "admin",
        "dlq_resubmit",
        "Put one dead letter back into its queue",
        "dead letters",
        "Resubmitted",
        (_AGENT, _MID),
        body="Empty",
        errors=(404, 415),
    ),
    Route(
        "POST",
        "/admin/dlq/{agent}/purge",
        "admin",
        "dlq_purge",
        "Delete the agent's dead letters",
        "dead letters",
        "Purged",
        (_AGENT,),
        body="Empty",
        errors=(415,),
    ),
    Route(
        "POST",
        "/admin/send",
        "admin",
        "send",
        "Publish a message",
        "messages",
        "Sent",
        body="SendBody",
        errors=(400, 403, 409, 415, 422, 503),
    ),
    Route(
        "POST",
        "/admin/request",
        "admin",
        "request",
        "Request/response: waits for the answer",
        "messages",
        "Response",
        body="RequestBody",
        errors=(400, 403, 415, 422, 502, 503, 504),
    ),
    Route(
        "GET",
        "/admin/tail",
        "admin",
        "tail",
        "Live events (Server-Sent Events)",
        "messages",
        "Message",
        (
            Param("agent", "query", _ID, "only events of this agent"),
            Param("type", "query", _ID, "only this message type"),
        ),
        errors=(501,),
        stream=True,
    ),
    Route(
        "GET",
        "/admin/trace/{trace_id}",
        "trace",
        "trace",
        "The causation tree of a message or correlation id (what this node saw)",
        "messages",
        "Trace",
        (Param("trace_id", "path", _ID, "a message id or a correlation id"),),
        errors=(404,),
    ),
    Route(
        "GET",
        "/admin/tasks",
        "inbox",
        "tasks",
        "A2A tasks parked for input (the human-in-the-loop inbox)",
        "tasks",
        "Tasks",
        (
            Param(
                "state",
                "query",
                {
                    "type": "string",
                    "enum": ["input-required", "auth-required", "submitted", "working"],
                },
                "tasks in this state (default input-required)",
            ),
        ),
    ),
    Route(
        "POST",
        "/admin/tasks/{task_id}/answer",
        "inbox",
        "answer",
        "Answer a parked task: the answer is the user's next turn and resumes the task",
        "tasks",
        "Answered",
        (Param("task_id", "path", _ID, "the A2A task id"),),
        body="AnswerBody",
        errors=(400, 404, 409, 415),
    ),
    Route(
        "GET",
        "/admin/conversations",
        "admin",
        "conversations",
        "Conversations",
        "conversations",
        "Conversations",
        (
            Param("state", "query", _ID, "active or ended"),
            Param("participant", "query", _ID, "only those with this participant"),
        ),
    ),
    Route(
        "GET",
        "/admin/conversations/{conversation_id}",
        "admin",
        "conversation",
        "One conversation with its turns",
        "conversations",
        "Conversation",
        (_CID, _LIMIT),
        errors=(400, 404),
    ),
    Route(
        "GET",
        "/admin/conversations/{conversation_id}/timeline",
        "trace",
        "timeline",
        "A conversation as lanes and arrows in time order",
        "conversations",
        "Timeline",
        (_CID,),
        errors=(404,),
    ),
)
"""Every ``/admin`` route, in the order the document lists them."""
