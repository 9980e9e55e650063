"""Identities on a shared development bus: every stack and test client gets addresses no other holds.

A bus refuses a second client with a taken (unit, client) pair, so tests that share one bus (one per
test session, or per pytest-xdist worker) take their addresses from one :class:`Identities`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

from sbusr.smartbus import codec
from sbusr.testing.processes import SERVER_UNIT

#: sbusr-api's unit (see sbusr.testing.api_process.API_UNIT); never handed out to servers
API_UNIT = 21
#: client ids a SmartBus URL accepts
CLIENT_IDS = range(1, 128)


class Identities:
    """Hands out (unit, client) pairs: for sbusr-servers (unit 19 first), IPSC stand-ins (units 1..15;
    unit 0 is left to tests that name it) and sbusr-api clients (unit 21). Thread-safe; never reuses."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        server_units = [SERVER_UNIT, *(u for u in codec.NET_CLIENT_UNITS if u not in (SERVER_UNIT, API_UNIT))]
        self._servers: Iterator[tuple[int, int]] = ((u, c) for u in server_units for c in CLIENT_IDS)
        self._ipscs: Iterator[tuple[int, int]] = ((u, p) for u in codec.IPSC_UNITS[1:] for p in CLIENT_IDS)
        self._api_clients: Iterator[int] = itertools.islice(itertools.count(10), len(CLIENT_IDS) - 10)

    def server(self) -> tuple[int, int]:
        """A (unit, client) for an sbusr-server."""
        with self._lock:
            return next(self._servers)

    def ipsc(self) -> tuple[int, int]:
        """A (unit, process) for an IPSC stand-in or another IPSC-role test client."""
        with self._lock:
            return next(self._ipscs)

    def api_client(self) -> int:
        """A client id for an sbusr-api (its unit is API_UNIT)."""
        with self._lock:
            return next(self._api_clients)
