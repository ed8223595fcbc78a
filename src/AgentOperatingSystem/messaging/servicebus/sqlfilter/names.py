"""The grammar's vocabulary: limits, keywords, operators and the system property names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "ARITHMETIC_OPS",
    "COMPARISON_OPS",
    "INT64_MAX",
    "MAX_EXPRESSION_LENGTH",
    "MAX_NESTING_DEPTH",
    "MAX_PAREN_NESTING",
    "SYSTEM_PROPERTIES",
    "is_keyword",
    "is_regular_identifier",
    "normalise_system_name",
]

MAX_EXPRESSION_LENGTH: Final = 1024
"""Longest accepted filter expression, in characters (the Azure Service Bus limit)."""

MAX_NESTING_DEPTH: Final = 128
"""Deepest accepted expression tree; parentheses, ``NOT`` and signs may nest 32 deep."""

MAX_PAREN_NESTING: Final = 32
"""Deepest nesting of parentheses, ``NOT`` and signs."""

INT64_MAX: Final = 2**63 - 1
"""Largest integer constant (a 64-bit ``long``, as on Azure)."""

_KEYWORDS: Final = frozenset(
    {"AND", "OR", "NOT", "IS", "NULL", "IN", "LIKE", "ESCAPE", "EXISTS", "TRUE", "FALSE"}
)
COMPARISON_OPS: Final = frozenset({"=", "<>", "!=", ">", ">=", "<", "<="})
"""The comparison operators (``!=`` is read as ``<>``)."""

ARITHMETIC_OPS: Final = frozenset({"+", "-", "*", "/", "%"})
"""The binary arithmetic operators."""

# System properties of a Service Bus message: normalised name -> keys tried in ``system``.
SYSTEM_PROPERTIES: Final[Mapping[str, tuple[str, ...]]] = {
    "messageid": ("message_id",),
    "correlationid": ("correlation_id",),
    "to": ("to",),
    "replyto": ("reply_to",),
    "label": ("subject", "label"),
    "subject": ("subject", "label"),
    "sessionid": ("session_id",),
    "replytosessionid": ("reply_to_session_id",),
    "contenttype": ("content_type",),
    "partitionkey": ("partition_key",),
    "viapartitionkey": ("via_partition_key",),
    "transactionpartitionkey": ("transaction_partition_key",),
    "deliverycount": ("delivery_count",),
    "enqueuedsequencenumber": ("enqueued_sequence_number",),
    "enqueuedtimeutc": ("enqueued_time_utc", "enqueued_time"),
    "expiresatutc": ("expires_at_utc", "expires_at"),
    "scheduledenqueuetimeutc": ("scheduled_enqueue_time_utc", "scheduled_enqueue_time"),
    "sequencenumber": ("sequence_number",),
    "size": ("size",),
    "timetolive": ("time_to_live",),
    "locktoken": ("lock_token",),
    "lockeduntilutc": ("locked_until_utc", "locked_until"),
    "deadlettersource": ("dead_letter_source",),
    "state": ("state",),
}


def normalise_system_name(name: str) -> str:
    """A system property name as :data:`SYSTEM_PROPERTIES` keys it (no ``_``, case-folded)."""
    return name.replace("_", "").casefold()


def is_keyword(word: str) -> bool:
    """Whether ``word`` is a keyword of the grammar (in any case)."""
    return word.isascii() and word.upper() in _KEYWORDS


def is_regular_identifier(name: str) -> bool:
    """Whether ``name`` can be written without brackets: a letter, then letters, digits or
    underscores, and not a keyword."""
    if not name or not name[0].isalpha():
        return False
    for ch in name[1:]:
        if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
            return False
    return not is_keyword(name)
