"""The distributed engine: NATS JetStream (one server or a cluster); the ``nats`` extra.

URL: ``nats://host:4222``, or a comma list for a cluster (``nats://h1:4222,nats://h2:4222`` or
``nats://h1:4222,h2:4222``), with an optional query ``?namespace=aos&replicas=3``; see
:func:`create_nats_broker`.

Layout in JetStream (``<ns>`` is the namespace; names in :mod:`.subjects`, assets in
:mod:`.setup`): stream ``<ns>_Q`` holds every queue, a message on
``<ns>.q.<token>.<priority>`` with the headers of :mod:`.headers`; one durable pull
consumer per (queue, priority) that has held messages, created when first needed, so an
agent that gets one priority costs one consumer and an idle one none (:mod:`.pullers`);
stream ``<ns>_DLQ`` holds dead letters
(:mod:`.dead_letters`); buckets ``<ns>_bind``, ``<ns>_done``, ``<ns>_dedup`` and
``<ns>_meta`` hold bindings, exactly-once keys, dedup keys and per-message bookkeeping; core
subjects carry publish notices (:mod:`.watch`), handoffs (:mod:`.handoff`) and direct
deliveries (:mod:`.direct`).

Consuming is driven by events: ``prepare(queue)`` subscribes to the queue's notices and asks
the stream which priorities hold messages; ``wait(queue, None)`` sets no timer and is woken
by notices, by the engine's one timer of local due times (:mod:`.timers`) and by one slow
safety poll per engine for what other processes do without a notice (:mod:`.watch`).

Semantics and their limits (documented honestly, each in its module):

* **Locks** are the consumer's ``ack_wait``, also tracked on the engine's clock
  (:mod:`.locks`); ``receive(lock_seconds=...)`` updates ``ack_wait`` when it differs, so
  processes should agree on one value; ``renew`` restarts it (:mod:`.settle`).
* **ack** is a pipelined double ack, confirmed later (:mod:`.acks`); **release** is a
  confirmed ``nak(delay)`` on the server's real clock; **attempts** is JetStream's
  ``num_delivered`` minus the redeliveries the engine caused to honour a delivery time.
* **send** is not one transaction: checks first (``max_depth`` in :mod:`.depth`,
  ``dedup_key`` in :mod:`.dedup`), then the publishes (:mod:`.publish`); message ids are
  deduplicated by the server (``Nats-Msg-Id``), best effort across processes.
* **ack(processed_key=..., outbox=...)** publishes the outbox, records the key, then acks:
  not atomic; the server's duplicate window keeps a retried outbox from landing twice.
* **Handoff**: a request whose recipient has a consumer that is live, idle and caught up
  right now is handed to it directly, nothing stored (:mod:`.direct`, :mod:`.handoff`).
* Publishes, acks and API calls that fail while a leader moves or the client reconnects
  are retried for a bounded time, then raise :class:`BrokerUnavailableError`
  (:mod:`.connection`); nats-py errors never reach a caller (:mod:`.translate`). A publish
  that was sent and never acknowledged raises its subclass
  :class:`PublishOutcomeUnknownError` with the message id: sending it again with the same
  id from this process is deduplicated and counted once (:mod:`.publish`).
* Works with nats-server 2.9 and newer (no feature of 2.10+ is required).
"""

from __future__ import annotations

from ...errors import MissingExtraError

try:
    import nats  # noqa: F401  (the extra; every module of this package needs it)
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("NATS engine", "nats") from exc

from ....config.urls import parse_nats_url
from .broker import NatsBroker
from .factory import create_nats_broker
from .subjects import queue_token, token_queue

__all__ = ["NatsBroker", "create_nats_broker", "parse_nats_url", "queue_token", "token_queue"]
