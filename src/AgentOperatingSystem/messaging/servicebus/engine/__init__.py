"""Service Bus on one of our engines (memory, SQLite, NATS): topics and subscriptions as
bound queues, SQL filter rules evaluated here, sizes kept in a ledger.

What a Service Bus user can expect on our engines
-------------------------------------------------
* A **topic** fans each message out to its **subscriptions**. A subscription is a queue on
  the broker seam named ``_sb/<topic>/subscriptions/<subscription>``, so every engine
  (memory, SQLite, NATS) provides the storage, the peek-lock and the dead-letter queue.
* A subscription has **rules**; a message reaches it when ANY rule's filter matches
  (:mod:`..sqlfilter`: SQL filters, correlation filters, ``TrueFilter``/``FalseFilter``). The
  rule created with the subscription is ``$Default``: ``TrueFilter``, or ``filter_rule``.
  Filters are parsed once, when the rule is created, and evaluated in process at send time.
* Filterable **user properties** are the scalar top-level fields (str, int, float, bool) of
  the sent dict, plus the ``properties=`` given to
  :meth:`~..manager.ServiceBusManager.send_to_topic` (which win). **System properties**
  (``sys.MessageId``, ``sys.CorrelationId``, ``sys.Label``/``sys.Subject``,
  ``sys.ContentType``, ``sys.To``, ``sys.ReplyTo``, ``sys.SessionId``) come from the message
  and keyword arguments.
* **Peek-lock**: a received message is locked for the subscription's ``lock_duration``;
  :meth:`~..manager.ServiceBusManager.complete_message` removes it,
  :meth:`~..manager.ServiceBusManager.abandon_message` makes it available again at once, and
  a message delivered ``max_delivery_count`` times goes to the subscription's dead-letter
  queue with reason ``MaxDeliveryCountExceeded`` (lock expiries count as deliveries, as on
  Azure). A message past its time to live (the smallest of the message's, the
  subscription's and the topic's) is never delivered: it is dead-lettered with reason
  ``TTLExpiredException`` when ``dead_lettering_on_message_expiration`` (the default
  here), else dropped.
* **Topic size** (``max_size_in_mb``): the manager counts the encoded bytes of every live
  message (available, scheduled or locked; dead letters are not counted) in each of the
  topic's subscriptions; a message that reaches three subscriptions counts three times. A
  send that would take the total over ``max_size_in_mb`` MiB raises
  :class:`~...errors.TopicFullError` and enqueues nothing. The count is kept by this manager
  exactly for what it sends and settles, and is reconciled with the engine's queue depths
  whenever topic metadata is refreshed (every ``metadata_refresh_seconds``): messages sent
  or settled by other processes are then estimated at the mean size of the counted ones.
* **Metadata** (topics, subscriptions, rules) is stored in the engine itself, through the
  seam's durable bindings, so it is as durable and as shared as the queues are. Each manager
  caches it for ``metadata_refresh_seconds`` (1 s): changes made by another process take up to
  that long to be seen; changes made through this manager are seen at once.
* **Duplicate detection** (``requires_duplicate_detection``) drops a message id sent again to
  the topic within ``duplicate_detection_window_seconds``; on NATS the engine's own
  ``dedup_window`` (600 s by default) bounds that window.
* Not implemented on our engines: rule actions (``SqlRuleAction``), sessions, auto-forwarding,
  auto-delete on idle, deferral.

The package: :mod:`.service` (:class:`EngineServiceBus`, the facade and the message paths),
:mod:`.catalog` (entity records in the engine's bindings, cached), :mod:`.admin` (topics,
subscriptions, rules), :mod:`.deadletters` and :mod:`.ledger` (topic sizes).
"""

from __future__ import annotations

from .service import EngineServiceBus

__all__ = ["EngineServiceBus"]
