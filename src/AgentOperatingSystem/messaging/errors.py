"""The exception tree of AOS Messaging.

Every error this library raises on purpose is a :class:`MessagingError`. Errors of the
libraries underneath (sqlite3, nats-py, aiohttp, azure-servicebus) are translated into one of
these with ``raise ... from exc``, so the original stays reachable as ``__cause__``.

::

    MessagingError
    ├── ConfigurationError (ValueError)        bad config, URL or engine choice
    │   └── MissingExtraError (ImportError)    optional engine not installed: names the extra
    ├── InvalidMessageError (ValueError)       wrong types, unknown enum values, bad fields
    │   ├── MessageTooLargeError               over ``max_message_bytes``
    │   └── DecodeError                        engine bytes that are not a valid envelope
    ├── DeliveryError                          publish/settle could not be carried out
    │   ├── QueueFullError                     ``max_queue_size`` reached: publish refused
    │   ├── DuplicateMessageError              message id already live in that queue
    │   ├── RoutingError                       no recipient, no route, no subscriber
    │   ├── UnknownMessageError (KeyError)     ack/nack of a message not held by this bus
    │   ├── LockLostError                      the lock expired and the message moved on
    │   └── AmbiguousMessageError              ack by id when several agents hold that id
    ├── RequestTimeoutError (TimeoutError)     ``request()`` got no response in time
    ├── RequestFailedError                     the request was dead-lettered by the responder
    ├── BrokerError                            the engine failed (I/O, connection, server)
    │   ├── BrokerClosedError                  used after ``stop()``/``close()``
    │   └── BrokerUnavailableError (ConnectionError)  engine cannot be reached now
    ├── SecurityError                          signing, encryption, keys
    │   ├── SignatureError                     missing, forged or tampered signature
    │   ├── DecryptionError                    no key opens the content
    │   ├── UnknownKeyError (KeyError)         key id or agent key not in the key ring
    │   └── PermissionDeniedError (PermissionError)  access control refused the action
    ├── RouterError                            bad routing rule or strategy
    ├── ConversationError                      unknown/ended conversation, non-participant
    │   ├── ConversationNotFoundError (KeyError)
    │   ├── ConversationClosedError
    │   └── NotAParticipantError (PermissionError)
    ├── StorageError                           the StorageManager's store failed
    ├── CircuitOpenError                       a circuit breaker refused the call
    ├── NetworkError (ConnectionError)         remote node failed or answered with an error
    │   ├── UnknownAgentError (KeyError)       no such agent in the registry
    │   ├── AgentUnreachableError              retries exhausted / circuit open
    │   └── RemoteError                        the remote node answered 4xx/5xx
    ├── ServiceBusError                        topics/subscriptions
    │   ├── EntityNotFoundError (KeyError)     no such topic/subscription/rule
    │   ├── EntityExistsError                  already exists
    │   ├── TopicFullError                     ``max_size_in_mb`` reached
    │   └── FilterSyntaxError (ValueError)     SQL filter does not parse: names the position
    └── FilterEvaluationError                  a filter failed at run time
"""

from __future__ import annotations

__all__ = [
    "AgentUnreachableError",
    "AmbiguousMessageError",
    "BrokerClosedError",
    "BrokerError",
    "BrokerUnavailableError",
    "CircuitOpenError",
    "ConfigurationError",
    "ConversationClosedError",
    "ConversationError",
    "ConversationNotFoundError",
    "DecodeError",
    "DecryptionError",
    "DeliveryError",
    "DuplicateMessageError",
    "EntityExistsError",
    "EntityNotFoundError",
    "FilterEvaluationError",
    "FilterSyntaxError",
    "InvalidMessageError",
    "LockLostError",
    "MessageTooLargeError",
    "MessagingError",
    "MissingExtraError",
    "NetworkError",
    "NotAParticipantError",
    "PermissionDeniedError",
    "PublishOutcomeUnknownError",
    "QueueFullError",
    "RemoteError",
    "RequestFailedError",
    "RequestTimeoutError",
    "RouterError",
    "RoutingError",
    "SecurityError",
    "ServiceBusError",
    "SignatureError",
    "StorageError",
    "TopicFullError",
    "UnknownAgentError",
    "UnknownKeyError",
    "UnknownMessageError",
]


MAX_ERROR_TEXT = 2000
"""How much of an error's text is kept where it is recorded (dead letters, node answers)."""


def error_text(exc: BaseException) -> str:
    """``"TypeName: message"``, cut to :data:`MAX_ERROR_TEXT` characters."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 3] + "..."


class MessagingError(Exception):
    """Root of every error AOS Messaging raises."""


class ConfigurationError(MessagingError, ValueError):
    """A configuration value, engine URL or option is invalid."""


class MissingExtraError(ConfigurationError, ImportError):
    """An optional engine's dependencies are not installed; the message names the extra."""

    def __init__(self, feature: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs the optional dependencies: pip install 'aos-messaging[{extra}]'"
        )
        self.extra = extra


class InvalidMessageError(MessagingError, ValueError):
    """A message or one of its fields is malformed."""


class MessageTooLargeError(InvalidMessageError):
    """The encoded message is larger than ``max_message_bytes``."""


class DecodeError(InvalidMessageError):
    """Bytes from an engine are not a valid AOS envelope."""


class DeliveryError(MessagingError):
    """A publish or settlement could not be carried out."""


class QueueFullError(DeliveryError):
    """The recipient's queue holds ``max_queue_size`` messages: the publish is refused."""


class DuplicateMessageError(DeliveryError):
    """A message with this id is already live in the target queue."""


class RoutingError(DeliveryError):
    """The message names no recipient and nothing routes it."""


class UnknownMessageError(DeliveryError, KeyError):
    """The message id is not held (locked) by this bus for that agent."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the plain text
        return str(self.args[0]) if self.args else ""


class LockLostError(DeliveryError):
    """The lock on the message expired; another consumer may have it now."""


class AmbiguousMessageError(DeliveryError):
    """Several agents on this bus hold a message with this id: pass ``agent_id``."""


class RequestTimeoutError(MessagingError, TimeoutError):
    """``request()`` received no response within its timeout."""


class RequestFailedError(MessagingError):
    """The request was dead-lettered by the responder; ``reason`` says why."""

    def __init__(self, message: str, reason: str | None = None, error: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.error = error


class BrokerError(MessagingError):
    """The engine failed."""


class BrokerClosedError(BrokerError):
    """The bus or engine was used after it was stopped."""


class BrokerUnavailableError(BrokerError, ConnectionError):
    """The engine cannot be reached right now."""


class PublishOutcomeUnknownError(BrokerUnavailableError):
    """A publish was sent and its acknowledgement never came (a timeout, or the connection
    lost after the write): the message may or may not be stored. ``message_id`` names it;
    publishing again with the same id is deduplicated within the dedup window."""

    def __init__(self, message: str, message_id: str | None = None) -> None:
        super().__init__(message)
        self.message_id = message_id


class SecurityError(MessagingError):
    """Signing, encryption or key handling failed."""


class SignatureError(SecurityError):
    """A signature is missing, forged or does not match the message."""


class DecryptionError(SecurityError):
    """No available key opens the encrypted content."""


class UnknownKeyError(SecurityError, KeyError):
    """A key id or agent key is not in the key ring."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PermissionDeniedError(SecurityError, PermissionError):
    """Access control refused the action."""


class RouterError(MessagingError):
    """A routing rule or strategy is invalid."""


class ConversationError(MessagingError):
    """A conversation operation failed."""


class ConversationNotFoundError(ConversationError, KeyError):
    """No conversation with that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConversationClosedError(ConversationError):
    """The conversation has ended."""


class NotAParticipantError(ConversationError, PermissionError):
    """The sender is not a participant of the conversation."""


class StorageError(MessagingError):
    """The StorageManager's store failed."""


class CircuitOpenError(MessagingError):
    """The circuit breaker is open (or half-open and full): the call was not made."""

    def __init__(self, name: str, retry_after: float | None = None) -> None:
        text = f"circuit {name!r} is open"
        if retry_after is not None:
            text += f"; retry in {retry_after:.3f}s"
        super().__init__(text)
        self.name = name
        self.retry_after = retry_after


class NetworkError(MessagingError, ConnectionError):
    """A remote node failed or could not be reached."""


class UnknownAgentError(NetworkError, KeyError):
    """No such agent is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AgentUnreachableError(NetworkError):
    """The agent's node could not be reached after retries, or its circuit is open."""


class RemoteError(NetworkError):
    """The remote node answered with an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServiceBusError(MessagingError):
    """A topic or subscription operation failed."""


class EntityNotFoundError(ServiceBusError, KeyError):
    """No such topic, subscription or rule."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class EntityExistsError(ServiceBusError):
    """The topic, subscription or rule already exists."""


class TopicFullError(ServiceBusError):
    """The topic reached its ``max_size_in_mb``."""


class FilterSyntaxError(ServiceBusError, ValueError):
    """A SQL filter expression does not parse; ``position`` is the 0-based offset."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message if position is None else f"{message} at position {position}")
        self.position = position


class FilterEvaluationError(MessagingError):
    """A filter failed while it was evaluated."""
