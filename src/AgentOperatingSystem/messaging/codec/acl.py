"""Access control: which message types an agent may publish and receive.

An entry ``{"can_publish": [...], "can_subscribe": [...], "updated_at": ...}`` (type names;
``None`` = every type) is stored per agent in the ``aos.acl`` namespace of the store and
kept in a local cache, so the checks the bus makes on every publish and subscribe are
dictionary look-ups. An agent without an entry gets the default (allow or deny). An agent may
always answer a request its handler is processing: being allowed to receive a query implies
being allowed to answer it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Callable, Iterable

from ..errors import InvalidMessageError, PermissionDeniedError
from ..types import REQUEST_TYPES, Message, MessageType

__all__ = ["NS_ACL", "AccessControl", "Permissions", "permission_sets"]

log = logging.getLogger("aos.messaging.security")

#: Store namespace of access-control entries (key: agent id).
NS_ACL = "aos.acl"

Permissions = tuple[frozenset[str] | None, frozenset[str] | None]
"""An agent's entry: the type names it may publish and those it may receive (``None``:
every type)."""

_REPLY_TYPES = frozenset({MessageType.RESPONSE, MessageType.ERROR})


def _type_set(values: Iterable[MessageType | str] | None, what: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes, MessageType)):
        raise InvalidMessageError(f"{what} must be a list of message types, not a single value")
    try:
        items = list(values)
    except TypeError:
        raise InvalidMessageError(f"{what} must be a list of message types") from None
    return frozenset(MessageType.coerce(t).value for t in items)


def permission_sets(
    agent_id: str,
    can_publish: Iterable[MessageType | str] | None,
    can_subscribe: Iterable[MessageType | str] | None,
) -> Permissions:
    """Check an entry given by a caller; raise :class:`InvalidMessageError` when it is not
    a non-empty agent id with lists of message types (or ``None``)."""
    if not isinstance(agent_id, str) or not agent_id:
        raise InvalidMessageError("agent_id must be a non-empty string")
    return _type_set(can_publish, "can_publish"), _type_set(can_subscribe, "can_subscribe")


def _parse_acl(agent_id: str, value: Any) -> Permissions | None:
    if not isinstance(value, dict):
        log.warning("ignoring a malformed access-control entry for %r", agent_id)
        return None
    try:
        pub = value.get("can_publish")
        sub = value.get("can_subscribe")
        return (
            None if pub is None else frozenset(MessageType.coerce(t).value for t in pub),
            None if sub is None else frozenset(MessageType.coerce(t).value for t in sub),
        )
    except (TypeError, InvalidMessageError):
        log.warning("ignoring a malformed access-control entry for %r", agent_id)
        return None


def _answers(request: Message | None, sender_id: str) -> bool:
    """True when ``request`` is a request addressed to ``sender_id`` (it may answer)."""
    return (
        request is not None
        and request.reply_to is not None
        and request.message_type in REQUEST_TYPES
        and request.recipient_id in (None, sender_id)
    )


def _listed(types: frozenset[str] | None) -> list[str] | None:
    return None if types is None else sorted(types)


class AccessControl:
    """This process's copy of the access-control entries, the checks and the changes.

    ``store()`` gives the StorageManager the entries are kept in; ``default_allow`` governs
    an agent without an entry.
    """

    def __init__(self, store: Callable[[], Any], *, default_allow: bool) -> None:
        self.default_allow = default_allow
        self._entries: dict[str, Permissions] = {}
        self._store = store

    @property
    def active(self) -> bool:
        """True when a check can refuse: an entry exists or the default denies."""
        return not self.default_allow or bool(self._entries)

    def load(self, rows: Iterable[tuple[str, Any]]) -> None:
        """Replace the cache with the entries of the whole namespace."""
        self._entries = {
            agent: perm for agent, value in rows if (perm := _parse_acl(agent, value)) is not None
        }

    def apply(self, agent: str, value: Any) -> None:
        """One entry changed in the store: ``value`` is its value now, or None when deleted."""
        perm = None if value is None else _parse_acl(agent, value)
        if perm is None:
            self._entries.pop(agent, None)
        else:
            self._entries[agent] = perm

    def _allowed(self, agent: str, kind: str, index: int) -> bool:
        perm = self._entries.get(agent)
        if perm is None:
            return self.default_allow
        allowed = perm[index]
        return allowed is None or kind in allowed

    def authorize_publish(
        self, sender_id: str, message_type: MessageType, answering: Message | None = None
    ) -> None:
        """Raise :class:`PermissionDeniedError` when ``sender_id`` may not publish that type.

        ``answering`` is the message whose handler is publishing, if any: a request addressed
        to ``sender_id`` may always be answered, whatever its entry says."""
        if self._allowed(sender_id, message_type.value, 0):
            return
        if message_type in _REPLY_TYPES and _answers(answering, sender_id):
            return
        raise PermissionDeniedError(
            f"agent {sender_id!r} may not publish {message_type.value!r} messages"
        )

    def authorize_subscribe(self, agent_id: str, message_type: MessageType) -> None:
        """Raise :class:`PermissionDeniedError` when ``agent_id`` may not receive that type."""
        if not self._allowed(agent_id, message_type.value, 1):
            raise PermissionDeniedError(
                f"agent {agent_id!r} may not subscribe to {message_type.value!r} messages"
            )

    async def put(self, agent_id: str, permissions: Permissions) -> None:
        """Store and apply an entry checked by :func:`permission_sets`."""
        pub, sub = permissions
        record = {
            "can_publish": _listed(pub),
            "can_subscribe": _listed(sub),
            "updated_at": datetime.now(UTC).isoformat(),
        }
        await self._store().put(NS_ACL, agent_id, record)
        self._entries[agent_id] = permissions

    async def remove(self, agent_id: str) -> bool:
        """Drop an agent's entry; whether the store had one."""
        existed: bool = await self._store().delete(NS_ACL, agent_id)
        self._entries.pop(agent_id, None)
        return existed

    def get(self, agent_id: str) -> dict[str, list[str] | None] | None:
        """The agent's entry as ``{"can_publish": [...], "can_subscribe": [...]}`` (``None``
        for every type), or ``None`` when it has none."""
        perm = self._entries.get(agent_id)
        if perm is None:
            return None
        pub, sub = perm
        return {"can_publish": _listed(pub), "can_subscribe": _listed(sub)}
