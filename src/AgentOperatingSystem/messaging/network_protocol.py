"""The spec's import path for :class:`NetworkProtocol` and :class:`ConnectionPool`; the node
lives in :mod:`.network` (one module per concept)."""

from ..config.network import NetworkConfig
from .network.auth import sign_request, signature_headers, verify_request
from .network.node import NetworkProtocol
from .network.outbox import OUTBOX_PREFIX, outbox_queue
from .network.pool import Connection, ConnectionPool
from .network.registry import AgentInfo, AgentRegistry
from .network.sending import ResubmitReport, SendReceipt
from .network.wire import API_PREFIX, normalize_address

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
