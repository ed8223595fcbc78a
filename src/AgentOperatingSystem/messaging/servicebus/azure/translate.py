"""SDK error translation: an exception of ``azure.core`` or ``azure.servicebus`` becomes one
of ours (:mod:`...errors`), raised ``from`` the original.

A plain ``HttpResponseError`` carrying 409/404 (what the SDK raises when the service sends an
error body) counts as exists/not found; 401/403 as a permission refusal; 429 and 5xx as the
service being unavailable.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from ...errors import (
    BrokerUnavailableError,
    EntityExistsError,
    EntityNotFoundError,
    LockLostError,
    MessageTooLargeError,
    MessagingError,
    PermissionDeniedError,
    ServiceBusError,
    TopicFullError,
    UnknownMessageError,
)
from . import sdk
from .sdk import sb_errors

__all__ = ["azure_errors", "translate_azure_error"]


def translate_azure_error(exc: BaseException, what: str) -> MessagingError:
    """Our error for an exception of the Azure SDK (``what`` names the operation/entity)."""
    if isinstance(exc, sb_errors.MessageAlreadySettled):
        return UnknownMessageError(f"{what}: the message was already settled")
    if isinstance(exc, sdk.ResourceExistsError) or isinstance(
        exc, sb_errors.MessagingEntityAlreadyExistsError
    ):
        return EntityExistsError(f"{what}: already exists")
    if isinstance(exc, sdk.ResourceNotFoundError) or isinstance(
        exc, sb_errors.MessagingEntityNotFoundError
    ):
        return EntityNotFoundError(f"{what}: not found")
    if isinstance(exc, sdk.ClientAuthenticationError) or isinstance(
        exc, (sb_errors.ServiceBusAuthenticationError, sb_errors.ServiceBusAuthorizationError)
    ):
        return PermissionDeniedError(f"{what}: Azure refused the credentials: {exc}")
    if isinstance(exc, sdk.HttpResponseError):
        status = exc.status_code
        if status == 409:
            return EntityExistsError(f"{what}: already exists")
        if status == 404:
            return EntityNotFoundError(f"{what}: not found")
        if status in (401, 403):
            return PermissionDeniedError(f"{what}: Azure refused the request ({status})")
        if status is not None and (status == 429 or status >= 500):
            return BrokerUnavailableError(f"{what}: Azure is unavailable ({status}): {exc}")
        return ServiceBusError(f"{what}: Azure answered {status}: {exc}")
    if isinstance(exc, sb_errors.ServiceBusQuotaExceededError):
        return TopicFullError(f"{what}: quota exceeded: {exc}")
    if isinstance(exc, sb_errors.MessageLockLostError):
        return LockLostError(f"{what}: the message lock was lost (it will be delivered again)")
    if isinstance(exc, sb_errors.MessageSizeExceededError):
        return MessageTooLargeError(f"{what}: {exc}")
    if isinstance(
        exc,
        (
            sb_errors.ServiceBusConnectionError,
            sb_errors.ServiceBusCommunicationError,
            sb_errors.ServiceBusServerBusyError,
            sb_errors.OperationTimeoutError,
            sdk.ServiceRequestError,
            sdk.ServiceResponseError,
        ),
    ):
        return BrokerUnavailableError(f"{what}: cannot reach Azure Service Bus: {exc}")
    return ServiceBusError(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def azure_errors(what: str) -> Iterator[None]:
    """Run the block, raising an SDK error (or an already-settled message) as ours."""
    try:
        yield
    except MessagingError:
        raise
    except (sdk.AzureError, sb_errors.MessageAlreadySettled) as exc:
        raise translate_azure_error(exc, what) from exc
