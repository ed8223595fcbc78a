"""Agents on other hosts: the node (HTTP and A2A), its connection pool, auth and registry.

:mod:`.node` holds :class:`~.node.NetworkProtocol`, the node; the parts it is made of are
one module each: :mod:`.wire` (the HTTP wire), :mod:`.auth` (HMAC signing and its check),
:mod:`.registry` (where agents are), :mod:`.hosting` (which of them a node hosts),
:mod:`.pool` (sending: the pool and its connection handles), :mod:`.transport` (one request
with retries and a circuit per node), :mod:`.lanes` (batching sends to a busy node),
:mod:`.sending` (what a send takes and gives back), :mod:`.intake` (what arrives),
:mod:`.outbox` (failed sends), :mod:`.peers` (importing another node's agents),
:mod:`.resource` (``start``/``aclose``/``async with``) and :mod:`.a2a` (A2A 1.0: cards,
JSON-RPC, tasks, streaming). The spec's import path is
:mod:`AgentOperatingSystem.messaging.network_protocol`, which re-exports the public names.
"""
