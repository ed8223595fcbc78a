"""The checks the manager makes before a backend is asked anything: entity names as Azure
allows them, durations and counts. Each raises :class:`~..errors.ConfigurationError`."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from ..errors import ConfigurationError

__all__ = [
    "positive_int",
    "positive_seconds",
    "valid_rule",
    "valid_subscription",
    "valid_topic",
    "wait_seconds",
]

_TOPIC_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,258}[A-Za-z0-9])?$")
_SUB_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,48}[A-Za-z0-9])?$")
_RULE_RE = re.compile(r"^(?:\$Default|[A-Za-z0-9](?:[A-Za-z0-9._-]{0,48}[A-Za-z0-9])?)$")


def _check_name(kind: str, value: object, pattern: re.Pattern[str], limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{kind} must be a non-empty string, not {value!r}")
    if len(value) > limit or not pattern.match(value):
        raise ConfigurationError(
            f"invalid {kind} {value!r}: up to {limit} letters, digits, '.', '-', '_'"
            + (" or '/'" if kind == "topic_name" else "")
            + ", starting and ending with a letter or digit"
        )
    return value


def valid_topic(value: object) -> str:
    """A topic name: up to 260 letters, digits, ``.``, ``-``, ``_`` or ``/``."""
    return _check_name("topic_name", value, _TOPIC_RE, 260)


def valid_subscription(value: object) -> str:
    """A subscription name: up to 50 letters, digits, ``.``, ``-`` or ``_``."""
    return _check_name("subscription_name", value, _SUB_RE, 50)


def valid_rule(value: object) -> str:
    """A rule name: ``$Default``, or up to 50 letters, digits, ``.``, ``-`` or ``_``."""
    return _check_name("rule_name", value, _RULE_RE, 50)


def positive_seconds(name: str, value: object, *, allow_none: bool) -> float | None:
    """A positive, finite number of seconds (or a timedelta) as a float; None passes only
    with ``allow_none``."""
    if value is None:
        if allow_none:
            return None
        raise ConfigurationError(f"{name} is required")
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def wait_seconds(value: object) -> float | None:
    """A ``max_wait_time``: None (wait until something comes) or seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigurationError("max_wait_time must be a number of seconds >= 0")
    return float(value)


def positive_int(name: str, value: object) -> int:
    """A count of at least one (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an int >= 1")
    return value
