"""nats-py errors translated into ours, so none reaches a user.

A closed broker answers :class:`BrokerClosedError`; "no leader right now", timeouts and a
connection that is reconnecting become :class:`BrokerUnavailableError` (retried for a
bounded time by :meth:`.connection.Connection.retrying`); any other nats-py error becomes
:class:`BrokerError`, with the original as its ``__cause__``.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors

from ...errors import BrokerClosedError, BrokerError, BrokerUnavailableError, MessagingError

__all__ = ["UNAVAILABLE", "caused_by", "retryable", "translate"]

#: Errors that mean "the server cannot answer right now".
UNAVAILABLE: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
    ConnectionError,
)
# JetStream error codes that mean "no leader right now / try again".
_RETRY_ERR_CODES = {10008, 10076, 10077}


def retryable(exc: BaseException) -> bool:
    """Whether a JetStream API error means "try again" (no leader, unavailable)."""
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        return (
            getattr(exc, "code", None) == 503 or getattr(exc, "err_code", None) in _RETRY_ERR_CODES
        )
    return False


def translate(op: str, exc: BaseException, *, closed: bool) -> MessagingError | None:
    """Our error for a nats-py (or connection) error raised by ``op``; None for anything
    else (ours, or not an error of the client)."""
    if isinstance(exc, MessagingError) or not isinstance(exc, (Exception,)):
        return None
    if isinstance(exc, (nats.errors.Error, *UNAVAILABLE)) and closed:
        return BrokerClosedError("the NATS broker is closed")
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return BrokerUnavailableError(f"NATS {op}: connection closed")
    if isinstance(exc, nats.js.errors.APIError):
        if retryable(exc):
            return BrokerUnavailableError(f"NATS {op}: {exc}")
        return BrokerError(f"NATS {op}: {exc}")
    if isinstance(exc, UNAVAILABLE):
        return BrokerUnavailableError(f"NATS {op}: {type(exc).__name__} {exc}")
    if isinstance(exc, nats.errors.Error):
        return BrokerError(f"NATS {op}: {type(exc).__name__} {exc}")
    return None


def caused_by(exc: BrokerError, cls: type[BaseException]) -> bool:
    """Whether our ``exc`` was translated from a nats-py error of type ``cls``."""
    return isinstance(exc.__cause__, cls)
