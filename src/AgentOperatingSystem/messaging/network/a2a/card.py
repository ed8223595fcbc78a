"""The A2A Agent Card of a hosted agent: its JSON-RPC interfaces (A2A 1.0 and 0.3), its
capabilities as skills, and the bearer scheme when the endpoints need a token. Served at
``{node}/agents/{agent_id}/.well-known/agent-card.json``; cards are always public."""

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


def agent_card(info: AgentInfo, base: str, *, bearer: bool) -> dict[str, Any]:
    """The card of the agent ``info`` on the node at ``base``; ``bearer`` when its JSON-RPC
    endpoint requires ``Authorization: Bearer <token>``."""
    endpoint = f"{base}/agents/{quote(info.agent_id, safe='')}"
    meta = info.metadata
    card: dict[str, Any] = {
        "name": str(meta.get("name") or info.agent_id),
        "description": str(meta.get("description") or f"AOS agent {info.agent_id!r}"),
        "version": _VERSION,
        "supportedInterfaces": [
            {"url": endpoint, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": endpoint, "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
        ],
        "provider": {"organization": "Agent Operating System", "url": base},
        "capabilities": {"streaming": True, "pushNotifications": False},
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
    if bearer:
        card["securitySchemes"] = {"bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer"}}}
        card["securityRequirements"] = [{"schemes": {"bearer": {"list": []}}}]
    return card
