"""Importing another node's agents: its signed agent index, then each agent's public A2A
card (its skills become capabilities); an agent whose card the node does not serve is taken
from the index alone."""

from __future__ import annotations

import asyncio
from typing import Any, Container
from urllib.parse import quote

from ..clock import Clock
from ..errors import RemoteError
from .pool import ConnectionPool
from .registry import AgentInfo, capabilities_list
from .wire import API_PREFIX, CARD_PATH, log

__all__ = ["peer_agents"]


async def peer_agents(
    pool: ConnectionPool, address: str, clock: Clock, local: Container[str]
) -> list[AgentInfo]:
    """The agents of the node at ``address`` (normalised), as registry entries, but for
    those whose ids are ``local`` (this node's own agents are kept; a warning is logged)."""
    index = await pool.get_json(address, f"{API_PREFIX}/agents")
    if not isinstance(index, dict) or not isinstance(index.get("agents"), list):
        raise RemoteError(f"node {address} returned an invalid agent index")
    node_id = index.get("node_id") if isinstance(index.get("node_id"), str) else None
    entries: list[dict[str, Any]] = [
        a
        for a in index["agents"]
        if isinstance(a, dict) and isinstance(a.get("agent_id"), str) and a["agent_id"]
    ]
    cards = await asyncio.gather(*(_card(pool, address, e) for e in entries))
    out: list[AgentInfo] = []
    for entry, card in zip(entries, cards):
        agent_id = entry["agent_id"]
        if agent_id in local:
            log.warning("peer %s also hosts %r; keeping the local agent", address, agent_id)
            continue
        out.append(_entry(address, node_id, agent_id, card, clock.now()))
    return out


async def _card(pool: ConnectionPool, address: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The agent's card (with ``card_url``), or skills from its index entry when the node
    serves no card for it."""
    card_url = f"{address}/agents/{quote(entry['agent_id'], safe='')}{CARD_PATH}"
    try:
        data = await pool.get_json(address, card_url[len(address) :], signed=False)
    except RemoteError as exc:
        if exc.status != 404:
            raise
        caps = entry.get("capabilities")
        skills = [{"id": c} for c in caps] if isinstance(caps, list) else []
        return {"skills": skills}
    if not isinstance(data, dict):
        raise RemoteError(f"node {address} returned an invalid card for {entry!r}")
    data["card_url"] = card_url
    return data


def _entry(
    address: str, node_id: str | None, agent_id: str, card: dict[str, Any], now: float
) -> AgentInfo:
    skills: list[Any] = card["skills"] if isinstance(card.get("skills"), list) else []
    caps = [s["id"] for s in skills if isinstance(s, dict) and isinstance(s.get("id"), str)]
    metadata = {"name": str(card.get("name") or agent_id)}
    if card.get("description"):
        metadata["description"] = str(card["description"])
    if card.get("card_url"):
        metadata["card_url"] = str(card["card_url"])
    return AgentInfo(agent_id, address, tuple(capabilities_list(caps)), node_id, metadata, now)
