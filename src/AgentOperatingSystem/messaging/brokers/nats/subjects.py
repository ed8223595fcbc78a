"""Names in JetStream: the subject token of a queue name, and every subject, stream and
consumer name of one namespace.

A queue name (any string: ``"ceo_agent"``, ``"_reply.abc"``, unicode, dots, spaces) becomes
a subject token ``Q<base32>``. With namespace ``<ns>`` (default ``aos``):

* ``<ns>.q.<token>.<priority>``: the queue's messages (stream ``<ns>_Q``);
* ``<ns>.dlq.<token>``: its dead letters (stream ``<ns>_DLQ``);
* ``<ns>.n.<token>``: core notices "priority p has news" that wake ``wait``;
* ``<ns>.h.<token>`` (queue group ``<ns>.h``): handoffs offered to a live consumer;
* ``<ns>.d.<token>``: direct deliveries to a live listener;
* ``c<hash>_<priority>``: the durable pull consumer of one (queue, priority), made only for
  the priorities the queue has held messages of.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re

__all__ = [
    "DEFAULT_NAMESPACE",
    "NAMESPACE_RE",
    "PRIORITIES",
    "Subjects",
    "clamp_priority",
    "hash_text",
    "queue_token",
    "token_queue",
]

#: The priorities a queue has, ``CRITICAL=0`` first: one subject and consumer each.
PRIORITIES = (0, 1, 2, 3, 4)
DEFAULT_NAMESPACE = "aos"
#: What a namespace may look like (it prefixes stream, bucket and subject names).
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@functools.lru_cache(maxsize=8192)
def queue_token(name: str) -> str:
    """Subject-safe, reversible token for a queue or topic name (``Q`` + base32, no padding)."""
    return "Q" + base64.b32encode(name.encode("utf-8")).decode("ascii").rstrip("=")


def token_queue(token: str) -> str | None:
    """Inverse of :func:`queue_token`; None for a token that is not one."""
    if not token.startswith("Q"):
        return None
    body = token[1:]
    try:
        return base64.b32decode(body + "=" * (-len(body) % 8)).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def hash_text(value: str, length: int = 32) -> str:
    """A hex digest of ``value`` cut to ``length`` characters (keys and consumer names)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length]


def clamp_priority(value: int) -> int:
    """The priority a message is stored under: 0..4."""
    return min(max(int(value), 0), 4)


class Subjects:
    """The names of one namespace (see the module docs)."""

    __slots__ = (
        "all_dead",
        "all_queues",
        "dlq_stream",
        "handoff_group",
        "namespace",
        "q_stream",
    )

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.q_stream = f"{namespace}_Q"
        self.dlq_stream = f"{namespace}_DLQ"
        self.all_queues = f"{namespace}.q.>"
        self.all_dead = f"{namespace}.dlq.>"
        self.handoff_group = f"{namespace}.h"

    def queue(self, queue: str, priority: int) -> str:
        """Where ``queue``'s messages of ``priority`` are stored."""
        return f"{self.namespace}.q.{queue_token(queue)}.{priority}"

    def queue_filter(self, queue: str) -> str:
        """Every priority subject of ``queue``."""
        return f"{self.namespace}.q.{queue_token(queue)}.*"

    def dead(self, queue: str) -> str:
        """Where ``queue``'s dead letters are stored."""
        return f"{self.namespace}.dlq.{queue_token(queue)}"

    def notice(self, queue: str) -> str:
        """The core subject of ``queue``'s publish notices."""
        return f"{self.namespace}.n.{queue_token(queue)}"

    def handoff(self, queue: str) -> str:
        """The core subject a handoff to ``queue``'s consumers is offered on."""
        return f"{self.namespace}.h.{queue_token(queue)}"

    def direct(self, queue: str) -> str:
        """The core subject of direct deliveries to ``queue``'s listener."""
        return f"{self.namespace}.d.{queue_token(queue)}"

    def buckets(self) -> tuple[str, str, str, str]:
        """The key-value buckets: bindings, processed keys, dedup keys, message meta."""
        ns = self.namespace
        return f"{ns}_bind", f"{ns}_done", f"{ns}_dedup", f"{ns}_meta"

    @staticmethod
    def consumer_base(queue: str) -> str:
        """The consumer name of ``queue`` without its ``_<priority>`` suffix."""
        return f"c{hash_text(queue, 40)}"

    def next_request(self, consumer: str) -> str:
        """The API subject a pull request of ``consumer`` goes to."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.q_stream}.{consumer}"
