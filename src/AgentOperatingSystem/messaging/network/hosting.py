"""Which agents a node hosts: the node's own addresses, and the registry entries that point
at them (or, before the node has an address, that name the node)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..clock import Clock
from ..errors import ConfigurationError, InvalidMessageError
from .registry import AgentInfo, AgentRegistry, capabilities_list
from .wire import normalize_address

__all__ = ["HostedAgents"]


class HostedAgents:
    """The agents of the node ``node_id``, as the shared ``registry`` records them."""

    def __init__(
        self, registry: AgentRegistry, node_id: str, clock: Clock, public_url: str | None
    ) -> None:
        self.registry = registry
        self.node_id = node_id
        self.clock = clock
        #: the node's own addresses (normalised)
        self.own: set[str] = set()
        #: ids of the agents registered on this node
        self.local: set[str] = set()
        if public_url:
            self.own.add(normalize_address(public_url))

    def add_own(self, url: str) -> None:
        """Record ``url`` (and its localhost / 127.0.0.1 twin) as this node's address."""
        own = normalize_address(url)
        self.own.add(own)
        for a, b in (("//127.0.0.1:", "//localhost:"), ("//localhost:", "//127.0.0.1:")):
            if a in own:
                self.own.add(own.replace(a, b))

    def is_own(self, address: str) -> bool:
        """True when ``address`` is this node's."""
        return normalize_address(address) in self.own

    def is_local(self, info: AgentInfo) -> bool:
        """True when the agent ``info`` is hosted on this node."""
        if info.address is None:
            return info.node_id == self.node_id
        try:
            return normalize_address(info.address) in self.own
        except ConfigurationError:
            return False

    async def get(self, agent_id: str) -> AgentInfo | None:
        """The agent's entry when this node hosts it, else None."""
        info = await self.registry.get(agent_id)
        return info if info is not None and self.is_local(info) else None

    async def list(self) -> list[AgentInfo]:
        """Every agent hosted on this node."""
        return [a for a in await self.registry.list() if self.is_local(a)]

    async def register(
        self,
        agent_id: str,
        address: str | None,
        capabilities: Iterable[str] | None,
        metadata: Mapping[str, Any] | None,
        url: str | None,
    ) -> AgentInfo:
        """Register an agent: on this node when ``address`` is None or its own (at ``url``,
        the node's address once it serves), else on the node at ``address``."""
        if not isinstance(agent_id, str) or not agent_id:
            raise InvalidMessageError("agent_id must be a non-empty string")
        caps = tuple(capabilities_list(capabilities))
        addr = normalize_address(address) if address is not None else None
        local = addr is None or addr in self.own
        if local and addr is None:
            addr = url
        info = AgentInfo(
            agent_id,
            addr,
            caps,
            self.node_id if local else None,
            dict(metadata or {}),
            self.clock.now(),
        )
        await self.registry.register(info)
        if local:
            self.local.add(agent_id)
        else:
            self.local.discard(agent_id)
        return info

    async def unregister(self, agent_id: str) -> bool:
        """Remove an agent from the registry; True when it was there."""
        self.local.discard(agent_id)
        return await self.registry.unregister(agent_id)

    async def readdress(self, url: str) -> None:
        """Give ``url`` to the local agents registered before the node had an address."""
        for agent_id in list(self.local):
            info = await self.registry.get(agent_id)
            if info is not None and info.address is None:
                await self.registry.register(
                    AgentInfo(
                        info.agent_id,
                        url,
                        info.capabilities,
                        self.node_id,
                        info.metadata,
                        info.registered_at,
                    )
                )
