"""Delivery policy values decided above the broker seam: retry/backoff and per-message options."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigurationError
from .types import DeliveryMode

__all__ = ["DEFAULT_OPTIONS", "DeliveryOptions", "RetryPolicy"]

_RETRY_KEYS = {"max_attempts", "initial_delay", "backoff_multiplier", "max_delay", "jitter"}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed delivery is retried before it goes to the dead-letter queue.

    ``max_attempts`` counts deliveries (the first one included). The n-th retry waits
    ``min(initial_delay * backoff_multiplier ** (n - 1), max_delay)`` seconds, spread by
    ``jitter`` (0.1 = ±10%).
    """

    max_attempts: int = 5
    initial_delay: float = 1.0
    backoff_multiplier: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigurationError("retry_policy max_attempts must be an int")
        if self.max_attempts < 1:
            raise ConfigurationError("retry_policy max_attempts must be >= 1")
        for name in ("initial_delay", "backoff_multiplier", "max_delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"retry_policy {name} must be a number >= 0")
        if self.jitter > 1:
            raise ConfigurationError("retry_policy jitter must be between 0 and 1")

    @classmethod
    def parse(cls, value: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy | None:
        """Build a policy from a dict with the spec's keys (unknown keys are an error)."""
        if value is None or isinstance(value, RetryPolicy):
            return value
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"retry_policy must be a dict or RetryPolicy, not {type(value).__name__}"
            )
        unknown = set(value) - _RETRY_KEYS
        if unknown:
            raise ConfigurationError(
                f"unknown retry_policy keys {sorted(unknown)}; allowed: {sorted(_RETRY_KEYS)}"
            )
        return cls(**dict(value))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before redelivering after failed delivery number ``attempt``."""
        base = self.initial_delay * self.backoff_multiplier ** max(0, attempt - 1)
        base = min(base, self.max_delay)
        if self.jitter:
            r = (rng or random).uniform(-self.jitter, self.jitter)
            base = max(0.0, base * (1.0 + r))
        return float(base)

    def to_dict(self) -> dict[str, Any]:
        """The policy as a plain dict (for the envelope)."""
        return {
            "max_attempts": self.max_attempts,
            "initial_delay": self.initial_delay,
            "backoff_multiplier": self.backoff_multiplier,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
        }


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """Per-message delivery options that travel with the message in its envelope."""

    delivery_mode: DeliveryMode = DeliveryMode.AT_LEAST_ONCE
    idempotency_key: str | None = None
    retry_policy: RetryPolicy | None = None
    hops: int = 0
    causation_id: str | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)


DEFAULT_OPTIONS = DeliveryOptions()
