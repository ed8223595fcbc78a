"""Agents on other hosts: the node (HTTP and A2A), its connection pool, auth and registry."""
