"""A2A 1.0 for the agents a node hosts.

Each hosted agent has an Agent Card at ``/agents/{agent_id}/.well-known/agent-card.json``
(the node's primary agent also at ``/.well-known/agent-card.json``), a JSON-RPC 2.0
endpoint at ``/agents/{agent_id}`` and the HTTP+JSON binding under it, with every 1.0
operation: ``SendMessage``, ``SendStreamingMessage``, ``GetTask``, ``ListTasks``,
``CancelTask``, ``SubscribeToTask``, the push-notification configs and
``GetExtendedAgentCard`` (the A2A 0.3 names are answered in the 0.3 shapes). The endpoints
are public unless ``NetworkConfig.a2a_auth_token`` is set; agent cards are always public.

Modules: :mod:`.endpoint` (the routes, the JSON-RPC envelope, batches, versions),
:mod:`.rest` (the HTTP+JSON binding), :mod:`.rpc` (methods and errors), :mod:`.desk` (the
task methods), :mod:`.gateway` (turns to agents on the bus and their answers, late ones
included), :mod:`.store` (tasks in the StorageManager), :mod:`.listing` (``ListTasks``),
:mod:`.tasks` (tasks, messages, their rendering), :mod:`.parts` (message parts),
:mod:`.push` (push notifications through the bus), :mod:`.conversations` (a task's turns in
its conversation), :mod:`.card` (the Agent Card), :mod:`.sse` (streams).
"""

from .endpoint import A2AEndpoint

__all__ = ["A2AEndpoint"]
