"""Telemetry for the bus: OpenTelemetry spans, Prometheus metrics.

:mod:`.telemetry` is the front (read its docstring first); the work is done by
:mod:`.metrics` (registry on prometheus_client), :mod:`.tracing` (trace context, spans),
:mod:`.series` (the bus's counters), :mod:`.bus_telemetry` (the hooks the bus calls) and
:mod:`.http` (``GET /metrics`` for aiohttp).
"""
