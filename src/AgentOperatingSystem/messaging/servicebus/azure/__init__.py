"""The Azure Service Bus backend of :class:`~..manager.ServiceBusManager`.

Built on the official ``azure-servicebus`` SDK (the ``azure`` extra), async flavour:
``azure.servicebus.aio.ServiceBusClient`` for messages (AMQP) and
``azure.servicebus.aio.management.ServiceBusAdministrationClient`` for topics, subscriptions
and rules (HTTPS). Both are created from the connection string on start and closed on close.

Mapping
-------
* ``send_to_topic``: a ``ServiceBusMessage`` whose body is the JSON of the content
  (``content_type`` ``application/json``), with ``message_id``, ``correlation_id``,
  ``reply_to``, ``to`` (the message's ``recipient_id``), ``subject``, ``session_id``,
  ``time_to_live`` and ``scheduled_enqueue_time_utc``; the user properties (scalar fields of
  the dict plus ``properties=``) become ``application_properties``, so Azure's own SQL filters
  see them. An AOS :class:`~.types.Message` with a non-default sender, type or priority, or
  with metadata, also carries ``aos-sender``, ``aos-type``, ``aos-priority`` and
  ``aos-metadata`` application properties (names a SQL filter would have to bracket).
* A subscription's filter: the subscription is created, its automatic ``$Default`` rule
  (``TrueFilter``) is deleted and a ``$Default`` rule with the filter is created
  (``SqlRuleFilter``, ``CorrelationRuleFilter`` or ``FalseRuleFilter``). If that fails the new
  subscription is deleted again. ``add_rule``/``remove_rule``/``list_rules`` map to
  ``create_rule``/``delete_rule``/``list_rules``.
* Receiving is peek-lock (``receive_messages`` on one receiver per subscription, kept open
  until close); complete/abandon/dead-letter/renew go through the receiver that received the
  message, so they must happen on the same manager. Azure itself enforces
  ``max_delivery_count``, TTL and dead-lettering. ``delivery_count`` is reported as Azure's
  .NET SDK does (1 on the first delivery; the AMQP header holds one less).
* Received ``application_properties`` arrive with ``bytes`` keys and string values (a
  property of the AMQP layer); they are decoded to ``str``.
* Dead letters are read with ``peek_messages`` on the ``deadletter`` sub-queue. Azure has no
  "resubmit": :meth:`AzureServiceBus.resubmit` receives the dead letter, sends a copy to the
  topic and completes the dead letter. The copy goes through the topic's rules again, so
  **every** subscription whose rules match receives it, not only the one it came from.
  ``purge_dead_letters`` drains the sub-queue in receive-and-delete mode.
* Errors: ``azure.core.exceptions`` (``ResourceExistsError``/``ResourceNotFoundError``, or a
  plain ``HttpResponseError`` carrying 409/404, which is what the SDK raises when the service
  sends an error body) and ``azure.servicebus.exceptions`` are translated into ours
  (``EntityExistsError``, ``EntityNotFoundError``, ``TopicFullError`` for quota exceeded,
  ``LockLostError``, ``PermissionDeniedError``, ``BrokerUnavailableError``, ...) with
  ``raise ... from``.
* ``max_size_in_mb`` must be a whole number of megabytes (Azure accepts 1024-5120 on the
  Standard tier, up to 81920 on Premium).

The package: :mod:`.service` (:class:`AzureServiceBus`, the facade and the message paths),
:mod:`.connection` (the SDK clients, senders and receivers), :mod:`.admin` (topics,
subscriptions, rules), :mod:`.deadletters`, :mod:`.convert` (messages and values),
:mod:`.filters` (rule filters), :mod:`.translate` (SDK errors) and :mod:`.sdk` (the one module
that imports the SDK).
"""

from __future__ import annotations

from .filters import UnparsedSqlFilter
from .service import AzureServiceBus
from .translate import translate_azure_error

__all__ = ["AzureServiceBus", "UnparsedSqlFilter", "translate_azure_error"]
