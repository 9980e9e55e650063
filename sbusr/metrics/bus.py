"""The SmartBus link's metrics, fed by :class:`sbusr.transport.connection.BusConnection` events
(any sbusr process)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge


class BusMetrics:
    """``sbusr_bus_connected``, ``sbusr_bus_reconnects_total`` and ``sbusr_ipsc_peers``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._connected = Gauge("sbusr_bus_connected", "1 while registered on SmartBus, else 0.",
                                registry=registry)
        self._reconnects = Counter("sbusr_bus_reconnects", "Registrations on SmartBus after a lost link.",
                                   registry=registry)
        self._peers = Gauge("sbusr_ipsc_peers", "IPSC processes on the bus.", registry=registry)
        self._lock = threading.Lock()
        self._was_connected = False

    def bus_connected(self, up: bool) -> None:
        """The link came up (registered) or went down; a second and later "up" is a reconnect."""
        with self._lock:
            if up and self._was_connected:
                self._reconnects.inc()
            self._was_connected = self._was_connected or up
        self._connected.set(1 if up else 0)

    def bus_reconnected(self) -> None:
        self._reconnects.inc()

    def set_ipsc_peers(self, n: int) -> None:
        self._peers.set(n)
