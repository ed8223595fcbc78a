"""What travels in the headers of a stored message: names, quoting, and the ``Aos`` header.

A queued message carries ``Nats-Msg-Id`` (the server's duplicate check) and ``Aos``: one
header ``"<priority> <enqueued_at> <available_at|-> <expires_at|-> <quoted message id>"``
(every header costs encoding and parsing on both sides). A dead letter adds its queue,
reason, error, attempts and time; a handed-off request that failed once carries its prior
attempts (``Aos-Prior``) and error (``Aos-Error``).

A message another system published to a queue subject (plain nats-py, a CloudEvent with no
AOS headers) has no ``Aos`` header; :func:`foreign_info` gives it one when it is received:
its id is its ``Nats-Msg-Id`` when it has one, else ``<stream>:<sequence>`` (stable across
redeliveries), its enqueue time the server's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = [
    "DIGITS",
    "H_ATTEMPTS",
    "H_DEAD_AT",
    "H_ERROR",
    "H_INFO",
    "H_MSG_ID",
    "H_PRIOR",
    "H_QUEUE",
    "H_REASON",
    "H_WAIT",
    "STATUS",
    "Info",
    "attempts",
    "fnum",
    "foreign_info",
    "hq",
    "uq",
]

H_MSG_ID = "Nats-Msg-Id"
#: see the module docs
H_INFO = "Aos"
H_QUEUE = "Aos-Queue"
H_REASON = "Aos-Reason"
H_ERROR = "Aos-Error"
H_ATTEMPTS = "Aos-Attempts"
H_DEAD_AT = "Aos-Dead-Lettered-At"
#: attempts a message had before it was stored (a handed-off request that failed once)
H_PRIOR = "Aos-Prior"
#: how long the sender of a handoff waits for its answer (seconds)
H_WAIT = "Aos-Wait"
#: the status header of a server's answer without data (``503``: no responders)
STATUS = "Status"
#: the one-byte payload of a publish notice, by priority
DIGITS = [str(p).encode() for p in range(5)]

_PLAIN_RE = re.compile(r"[A-Za-z0-9_.~-]*")


def hq(value: str) -> str:
    """Header-safe text without spaces (no CR/LF, reversible with ``unquote``)."""
    if _PLAIN_RE.fullmatch(value):
        return value
    return quote(value, safe="")


def uq(value: str) -> str:
    """Inverse of :func:`hq`."""
    return unquote(value) if "%" in value else value


def fnum(value: str | None, default: float | None = None) -> float | None:
    """``value`` as a float; ``default`` when it is missing or not a number."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        return default


@dataclass(slots=True)
class Info:
    """What travels in the ``Aos`` header of a queued message."""

    priority: int
    enqueued_at: float
    available_at: float
    expires_at: float | None
    message_id: str

    def encode(self) -> str:
        """The header value."""
        available = repr(self.available_at) if self.available_at else "-"
        expires = "-" if self.expires_at is None else repr(self.expires_at)
        return f"{self.priority} {self.enqueued_at!r} {available} {expires} {hq(self.message_id)}"

    @classmethod
    def decode(cls, value: str | None) -> Info:
        """Read a header value (a missing or malformed one reads as priority 2, no id)."""
        parts = (value or "").split(" ")
        if len(parts) != 5:
            return cls(2, 0.0, 0.0, None, "")
        prio, enq, avail, exp, mid = parts
        return cls(
            int(prio) if prio.isdigit() else 2,
            fnum(enq, 0.0) or 0.0,
            0.0 if avail == "-" else (fnum(avail, 0.0) or 0.0),
            None if exp == "-" else fnum(exp),
            uq(mid),
        )


def foreign_info(
    headers: dict[str, str], priority: int, stream: str, seq: int, stored_at: float
) -> Info:
    """The ``Aos`` header a message without one stands for (see the module docs): the
    message of a foreign producer, stored at ``seq`` of ``stream`` at ``stored_at``."""
    message_id = headers.get(H_MSG_ID) or f"{stream}:{seq}"
    return Info(priority, stored_at, 0.0, None, message_id)


def attempts(delivered: int, phantom: int, headers: dict[str, str]) -> int:
    """Attempts so far: the server's deliveries, minus the ``phantom`` ones the engine caused
    to honour a delivery time, plus those made before the message was stored (``Aos-Prior``)."""
    count = max(1, delivered - phantom)
    prior = headers.get(H_PRIOR)
    if prior is not None and prior.isdigit():
        count += int(prior)
    return count
