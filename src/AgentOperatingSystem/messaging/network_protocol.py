"""The spec's import path for :class:`NetworkProtocol` and :class:`ConnectionPool`; the node
lives in :mod:`.network`."""

from .network.node import (
    API_PREFIX,
    OUTBOX_PREFIX,
    AgentInfo,
    AgentRegistry,
    Connection,
    ConnectionPool,
    NetworkConfig,
    NetworkProtocol,
    ResubmitReport,
    SendReceipt,
    normalize_address,
    outbox_queue,
    sign_request,
    signature_headers,
    verify_request,
)

__all__ = [
    "API_PREFIX",
    "OUTBOX_PREFIX",
    "AgentInfo",
    "AgentRegistry",
    "Connection",
    "ConnectionPool",
    "NetworkConfig",
    "NetworkProtocol",
    "ResubmitReport",
    "SendReceipt",
    "normalize_address",
    "outbox_queue",
    "sign_request",
    "signature_headers",
    "verify_request",
]
