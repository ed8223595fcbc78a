"""Where agents are: :class:`AgentInfo` entries in an :class:`AgentRegistry` kept in a
:class:`~AgentOperatingSystem.storage.manager.StorageManager` namespace, so every process
that shares the store (a SQLite file) shares the registry."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ...storage.manager import StorageManager
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, StorageError
from .wire import log

__all__ = ["REGISTRY_NAMESPACE", "AgentInfo", "AgentRegistry", "capabilities_list"]

REGISTRY_NAMESPACE = "aos.network.agents"


@dataclass(frozen=True)
class AgentInfo:
    """An agent in the registry: where it is hosted (``address``, the node's URL; ``None``
    for an agent of this node not yet started) and what it can do."""

    agent_id: str
    address: str | None
    capabilities: tuple[str, ...] = ()
    node_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    registered_at: float = 0.0

    def has_capabilities(self, capabilities: Iterable[str]) -> bool:
        """True when the agent has every one of ``capabilities``."""
        own = set(self.capabilities)
        return all(c in own for c in capabilities)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "agent_id": self.agent_id,
            "address": self.address,
            "capabilities": list(self.capabilities),
            "node_id": self.node_id,
            "metadata": dict(self.metadata),
            "registered_at": self.registered_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgentInfo:
        """Rebuild from :meth:`to_dict` output; :class:`StorageError` when malformed."""
        try:
            agent_id = data["agent_id"]
            address = data.get("address")
            caps = data.get("capabilities") or []
            node_id = data.get("node_id")
            metadata = data.get("metadata") or {}
            registered_at = float(data.get("registered_at") or 0.0)
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"malformed agent registry entry: {exc}") from exc
        if (
            not isinstance(agent_id, str)
            or not (address is None or isinstance(address, str))
            or not isinstance(caps, list)
            or not all(isinstance(c, str) for c in caps)
            or not (node_id is None or isinstance(node_id, str))
            or not isinstance(metadata, dict)
        ):
            raise StorageError(f"malformed agent registry entry for {data.get('agent_id')!r}")
        return cls(agent_id, address, tuple(caps), node_id, metadata, registered_at)


class AgentRegistry:
    """Where agents are: entries in a :class:`StorageManager` namespace, so every process
    sharing the store sees them. Look-ups are cached for ``cache_seconds``."""

    def __init__(
        self,
        storage: StorageManager,
        *,
        cache_seconds: float = 1.0,
        clock: Clock | None = None,
        namespace: str = REGISTRY_NAMESPACE,
    ) -> None:
        self.storage = storage
        self.namespace = namespace
        self.cache_seconds = cache_seconds
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._cache: dict[str, tuple[float, AgentInfo]] = {}

    async def register(self, info: AgentInfo) -> None:
        """Add or replace an agent."""
        await self.storage.put(self.namespace, info.agent_id, info.to_dict())
        self._cache[info.agent_id] = (self.clock.monotonic(), info)

    async def unregister(self, agent_id: str) -> bool:
        """Remove an agent; True when it was registered."""
        self._cache.pop(agent_id, None)
        return await self.storage.delete(self.namespace, agent_id)

    async def get(self, agent_id: str) -> AgentInfo | None:
        """The agent's entry, or None."""
        hit = self._cache.get(agent_id)
        now = self.clock.monotonic()
        if hit is not None and now - hit[0] < self.cache_seconds:
            return hit[1]
        data = await self.storage.get(self.namespace, agent_id)
        if data is None:
            self._cache.pop(agent_id, None)
            return None
        if not isinstance(data, dict):
            raise StorageError(f"malformed agent registry entry for {agent_id!r}")
        info = AgentInfo.from_dict(data)
        self._cache[agent_id] = (now, info)
        return info

    async def list(self) -> list[AgentInfo]:
        """Every registered agent, sorted by id (malformed entries are skipped and logged)."""
        out: list[AgentInfo] = []
        for key, data in await self.storage.list(self.namespace):
            try:
                if not isinstance(data, dict):
                    raise StorageError("not an object")
                out.append(AgentInfo.from_dict(data))
            except StorageError as exc:
                log.warning("skipping registry entry %r: %s", key, exc)
        return out

    async def find(self, capabilities: Iterable[str] | None = None) -> builtins.list[AgentInfo]:
        """Agents having every capability in ``capabilities`` (all agents when None)."""
        wanted = [] if capabilities is None else capabilities_list(capabilities)
        return [a for a in await self.list() if a.has_capabilities(wanted)]


def capabilities_list(value: Iterable[str] | None) -> list[str]:
    """``value`` as a list of distinct non-empty capability names, in order
    (:class:`ConfigurationError` for a string or a bad entry)."""
    if value is None:
        return []
    if isinstance(value, str):
        raise ConfigurationError("capabilities must be a list of strings, not a string")
    out: list[str] = []
    for c in value:
        if not isinstance(c, str) or not c:
            raise ConfigurationError(f"capabilities must be non-empty strings, got {c!r}")
        if c not in out:
            out.append(c)
    return out
