"""``ListTasks``: the filters (``contextId``, ``status``, ``statusTimestampAfter``), the page
(``pageSize`` 1..100, default 50; ``pageToken``, an opaque cursor), ``historyLength`` and
``includeArtifacts``; the tasks newest first (by status timestamp), with ``totalSize``,
``pageSize`` (the tasks on this page) and ``nextPageToken`` (``""`` on the last page)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Iterable, Mapping

from .rpc import invalid_params, optional_id
from .tasks import A2ATask, parse_state

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "TaskQuery", "list_page"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def _cursor(task: A2ATask) -> str:
    raw = f"{task.timestamp}|{task.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(token: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid_params("pageToken is not a token this server gave") from None
    stamp, sep, task_id = raw.partition("|")
    if not sep or not task_id or not stamp.endswith("Z"):
        raise invalid_params("pageToken is not a token this server gave")
    return stamp, task_id


def _parse_time(value: Any) -> str:
    """An ISO 8601 time as the tasks' timestamps are written (UTC, microseconds, Z)."""
    if not isinstance(value, str) or len(value) < 10:
        raise invalid_params("statusTimestampAfter must be an ISO 8601 timestamp")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_params("statusTimestampAfter must be an ISO 8601 timestamp") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _int_param(params: Mapping[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_params(f"{name} must be an integer")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise invalid_params(f"{name} must be {bound}")
    return value


@dataclass(frozen=True)
class TaskQuery:
    """The checked parameters of one ``ListTasks`` call."""

    context_id: str | None
    state: str | None
    after: str | None
    page_size: int
    cursor: tuple[str, str] | None
    history_length: int | None
    artifacts: bool

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> TaskQuery:
        """The query of ``params`` (:class:`RpcError` -32602 when one is invalid)."""
        state = None
        status = params.get("status")
        if status not in (None, "", "TASK_STATE_UNSPECIFIED"):
            state = parse_state(status) if isinstance(status, str) else None
            if state is None:
                raise invalid_params(f"status {status!r} is not a task state")
        after = params.get("statusTimestampAfter")
        token = params.get("pageToken")
        if token is not None and not isinstance(token, str):
            raise invalid_params("pageToken must be a string")
        include = params.get("includeArtifacts", False)
        if not isinstance(include, bool):
            raise invalid_params("includeArtifacts must be a boolean")
        size = _int_param(params, "pageSize", 1, MAX_PAGE_SIZE)
        return cls(
            context_id=optional_id(params.get("contextId"), "contextId"),
            state=state,
            after=None if after in (None, "") else _parse_time(after),
            page_size=DEFAULT_PAGE_SIZE if size is None else size,
            cursor=_parse_cursor(token) if token else None,
            history_length=_int_param(params, "historyLength", 0, None),
            artifacts=include,
        )

    def matches(self, task: A2ATask) -> bool:
        """True when ``task`` passes the filters."""
        return (
            (self.context_id is None or task.context_id == self.context_id)
            and (self.state is None or task.state == self.state)
            and (self.after is None or task.timestamp > self.after)
        )


def list_page(tasks: Iterable[A2ATask], query: TaskQuery, legacy: bool) -> dict[str, Any]:
    """The ``ListTasks`` result of ``query`` over ``tasks`` (the caller's, of one agent)."""
    matched = sorted(
        (t for t in tasks if query.matches(t)), key=lambda t: (t.timestamp, t.id), reverse=True
    )
    start = 0
    if query.cursor is not None:
        start = len(matched)
        for i, t in enumerate(matched):
            if (t.timestamp, t.id) < query.cursor:
                start = i
                break
    page = matched[start : start + query.page_size]
    more = start + len(page) < len(matched)
    history = 0 if query.history_length is None else query.history_length
    return {
        "tasks": [t.render(legacy, history, artifacts=query.artifacts) for t in page],
        "totalSize": len(matched),
        "pageSize": len(page),
        "nextPageToken": _cursor(page[-1]) if more and page else "",
    }
