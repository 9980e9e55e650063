"""Shared test helpers (processes, ports)."""
