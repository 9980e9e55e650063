"""``[smartbus] embedded_bus``: the development bus started inside the server, so that one process
is a complete stack for a try-out; at most one per process, and never over a bus already running."""

from __future__ import annotations

import logging
import threading

LOG = logging.getLogger(__name__)

_embedded_lock = threading.Lock()
_embedded_bus: object | None = None


def ensure_embedded_bus(host: str, port: int, encoding: str) -> None:
    """Start the development bus in this process unless one already listens there."""
    global _embedded_bus
    with _embedded_lock:
        if _embedded_bus is not None:
            return
        from sbusr.smartbus.bus import BusThread

        bus = BusThread(host=host, port=port, encoding=encoding)
        try:
            bus.start()
        except OSError as exc:
            LOG.warning("[smartbus] embedded_bus: not started, %s:%s is taken (%s); joining whatever bus "
                        "listens there, which this process did not start", host, port, exc)
            return
        LOG.warning("embedded development SmartBus listening on %s:%s (not for production)", host, port)
        _embedded_bus = bus
