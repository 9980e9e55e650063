"""Serving the metrics: sbusr-server's own small HTTP listener, and the text for sbusr-api's route."""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    start_http_server,
)

LOG = logging.getLogger(__name__)


class MetricsListener:
    """prometheus_client's HTTP server in a daemon thread; :meth:`stop` closes the socket."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return host, port

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(2.0)


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> MetricsListener | None:
    """Serve ``/metrics`` on ``host:port`` (port 0: not at all).

    A port that cannot be bound is logged and the process goes on: metrics must not keep a server
    from answering calls (a hot standby on the same host would collide on the port, for one).
    """
    if not port:
        return None
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        LOG.error("metrics not served: cannot listen on %s:%s (%s)", host, port, exc)
        return None
    LOG.info("metrics on http://%s:%s/metrics", host, port)
    return MetricsListener(httpd, thread)


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
