"""A2A 1.0 for the agents a node hosts.

Each hosted agent has an Agent Card at ``/agents/{agent_id}/.well-known/agent-card.json``
(its capabilities as skills, streaming supported) and a JSON-RPC endpoint at
``/agents/{agent_id}`` with ``SendMessage``, ``SendStreamingMessage`` (server-sent events),
``GetTask`` and ``CancelTask`` (the A2A 0.3 names ``message/send``, ``message/stream``,
``tasks/get``, ``tasks/cancel`` are answered in the 0.3 shapes). The endpoints are public
unless ``NetworkConfig.a2a_auth_token`` is set; agent cards are always public.

Modules: :mod:`.endpoint` (the routes and the task table), :mod:`.rpc` (JSON-RPC methods and
errors), :mod:`.tasks` (tasks, messages, their rendering), :mod:`.parts` (message parts),
:mod:`.card` (the Agent Card), :mod:`.sse` (the streaming answer).
"""

from .endpoint import A2AEndpoint

__all__ = ["A2AEndpoint"]
