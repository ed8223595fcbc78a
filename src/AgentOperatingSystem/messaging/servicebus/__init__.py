"""Azure Service Bus's API (topics, subscriptions, SQL filter rules) on every engine, and on
Azure itself through the official SDK.

* :mod:`.manager`: :class:`~.manager.ServiceBusManager`, the API (names and arguments are
  checked here, by :mod:`.validation`; a message to send is built by :mod:`.outgoing`;
  :mod:`.receiver` iterates a subscription; :mod:`.connect` picks the backend).
* :mod:`.backend`: the seam every backend implements; :mod:`.entities`: what they return;
  :mod:`.delegation`: the forwarding both backend facades share.
* :mod:`.engine`: the backend on our engines (memory, SQLite, NATS); :mod:`.azure`: the
  backend on Azure (the ``azure`` extra).
* :mod:`.sqlfilter`: the SQL filter grammar, its evaluation and correlation filters.

The spec's import path is :mod:`AgentOperatingSystem.messaging.servicebus_manager`.
"""
