"""Telemetry for the bus: OpenTelemetry spans, Prometheus metrics."""
