"""The A2A Agent Card of a hosted agent: its interfaces (JSON-RPC 1.0, HTTP+JSON 1.0 and
JSON-RPC 0.3, all at the agent's URL), its
capabilities as skills, and the bearer scheme when the endpoints need a token. Served at
``{node}/agents/{agent_id}/.well-known/agent-card.json`` and, for the node's primary agent,
at ``{node}/.well-known/agent-card.json``; cards are always public. When the endpoints need
a token, the card declares the extended card (``GetExtendedAgentCard``), which adds the
node's details for authenticated clients."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ..registry import AgentInfo

__all__ = ["agent_card"]

try:  # pragma: no cover - depends on how the package is installed
    from importlib.metadata import version as _pkg_version

    _VERSION = _pkg_version("aos-messaging")
except Exception:  # pragma: no cover
    _VERSION = "0.0.0"


def agent_card(
    info: AgentInfo, base: str, *, bearer: bool, extended: bool = False, push: bool = False
) -> dict[str, Any]:
    """The card of the agent ``info`` on the node at ``base``; ``bearer`` when its JSON-RPC
    endpoint requires ``Authorization: Bearer <token>``; ``extended``: the extended card
    (for an authenticated client); ``push`` when push notifications are sent."""
    endpoint = f"{base}/agents/{quote(info.agent_id, safe='')}"
    meta = info.metadata
    card: dict[str, Any] = {
        "name": str(meta.get("name") or info.agent_id),
        "description": str(meta.get("description") or f"AOS agent {info.agent_id!r}"),
        "version": _VERSION,
        "supportedInterfaces": [
            {"url": endpoint, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": endpoint, "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
            {"url": endpoint, "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
        ],
        "provider": {"organization": "Agent Operating System", "url": base},
        "capabilities": {
            "streaming": True,
            "pushNotifications": push,
            "extendedAgentCard": bearer,
        },
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": [
            {
                "id": cap,
                "name": cap.replace("_", " "),
                "description": f"{cap.replace('_', ' ')} (AOS capability {cap!r})",
                "tags": [cap],
            }
            for cap in info.capabilities
        ],
        # A2A 0.3 fields, for older clients.
        "url": endpoint,
        "preferredTransport": "JSONRPC",
        "protocolVersion": "0.3.0",
    }
    if extended:
        card["skills"] = [
            {**skill, "examples": [f"ask {info.agent_id!r} about {skill['name']}"]}
            for skill in card["skills"]
        ]
    if bearer:
        card["securitySchemes"] = {"bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer"}}}
        card["securityRequirements"] = [{"schemes": {"bearer": {"list": []}}}]
    return card
