"""Security for the bus: access control, content keys, signatures.

(Initial version: access control and content keys in memory; signing is completed by the
security work item.)
"""

from __future__ import annotations

from typing import Any

from .envelope import content_key_id
from .errors import PermissionDeniedError, SecurityError
from .types import Message, MessageType

__all__ = ["BusSecurity"]


class BusSecurity:
    """The bus's :class:`~.hooks.SecurityHooks` implementation."""

    def __init__(self, config: Any, storage: Any = None) -> None:
        self._config = config
        self._storage = storage
        self._default_allow = getattr(config, "default_permission", "allow") == "allow"
        self._publish: dict[str, frozenset[str] | None] = {}
        self._subscribe: dict[str, frozenset[str] | None] = {}
        self._content_keys: dict[str, bytes] = {}
        self.signing = bool(getattr(config, "sign_messages", False))
        self.require_signatures = bool(getattr(config, "require_signatures", False))
        self.acl_active = not self._default_allow

    async def start(self) -> None:
        """Nothing to load in this version."""

    async def close(self) -> None:
        """Nothing to release in this version."""

    def _allowed(self, table: dict[str, frozenset[str] | None], agent: str, kind: str) -> bool:
        if agent not in table:
            return self._default_allow
        allowed = table[agent]
        return allowed is None or kind in allowed

    def authorize_publish(self, sender_id: str, message_type: MessageType) -> None:
        """Raise when the sender may not publish this type."""
        if not self._allowed(self._publish, sender_id, message_type.value):
            raise PermissionDeniedError(
                f"agent {sender_id!r} may not publish {message_type.value!r} messages"
            )

    def authorize_subscribe(self, agent_id: str, message_type: MessageType) -> None:
        """Raise when the agent may not receive this type."""
        if not self._allowed(self._subscribe, agent_id, message_type.value):
            raise PermissionDeniedError(
                f"agent {agent_id!r} may not subscribe to {message_type.value!r} messages"
            )

    async def set_permissions(
        self,
        agent_id: str,
        can_publish: list[str] | None,
        can_subscribe: list[str] | None,
    ) -> None:
        """Set an agent's permissions (``None`` = everything)."""
        self._publish[agent_id] = None if can_publish is None else frozenset(
            MessageType.coerce(t).value for t in can_publish
        )
        self._subscribe[agent_id] = None if can_subscribe is None else frozenset(
            MessageType.coerce(t).value for t in can_subscribe
        )
        self.acl_active = True

    async def sign(self, message: Message) -> None:
        """Not available in this version."""
        raise SecurityError("message signing is not available yet")

    def verify(self, message: Message) -> bool:
        """Nothing verifies in this version."""
        return False

    def content_key(self, key_id: str) -> bytes | None:
        """Look up a content key."""
        return self._content_keys.get(key_id)

    def remember_content_key(self, key: bytes) -> str:
        """Add a content key."""
        key_id = content_key_id(bytes(key))
        self._content_keys[key_id] = bytes(key)
        return key_id
