"""Reliability helpers: circuit breaker."""
