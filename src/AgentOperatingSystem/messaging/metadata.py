"""The metadata keys the library writes on a message (ground: every layer may read them).

A dead letter handed back by ``get_dead_letter_messages`` (and by the network layer's failed
sends and Service Bus's dead-letter queues) says why it is there in these keys.
"""

from __future__ import annotations

__all__ = ["DLQ_AT", "DLQ_ATTEMPTS", "DLQ_ERROR", "DLQ_KEYS", "DLQ_QUEUE", "DLQ_REASON"]

#: Why the message was dead-lettered: ``max_attempts``, ``expired``, ``undecodable``, ...
DLQ_REASON = "aos.dead_letter.reason"
#: The last error's text, when there was one.
DLQ_ERROR = "aos.dead_letter.error"
#: The queue the message was dead-lettered from.
DLQ_QUEUE = "aos.dead_letter.queue"
#: How many deliveries were attempted.
DLQ_ATTEMPTS = "aos.dead_letter.attempts"
#: When it was dead-lettered (ISO 8601, UTC).
DLQ_AT = "aos.dead_letter.at"
#: Every dead-letter key (a resubmitted message is stripped of them).
DLQ_KEYS = (DLQ_REASON, DLQ_ERROR, DLQ_QUEUE, DLQ_ATTEMPTS, DLQ_AT)
