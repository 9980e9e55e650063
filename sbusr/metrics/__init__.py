"""Prometheus metrics of the sbusr processes and the rolling figures behind the status page.

Each process has one instance of each kind it needs, registered on prometheus_client's default
registry (which also carries the standard ``process_*`` and ``python_*`` series) on first use:

* :func:`requests` -- sbusr-server's calls (created by whatever listens for requests);
* :func:`bus` -- the SmartBus link (every process with a bus connection);
* :func:`api` -- sbusr-api's flows and HTTP requests.

Nothing here imports other sbusr modules: the driver, the connection and the commands call in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics

from sbusr.metrics.bus import BusMetrics
from sbusr.metrics.exposition import MetricsListener, render, serve
from sbusr.metrics.http import ApiMetrics
from sbusr.metrics.requests import RESULT, UNKNOWN_METHOD, RequestMetrics
from sbusr.metrics.window import fit

__all__ = ["RESULT", "UNKNOWN_METHOD", "ApiMetrics", "BusMetrics", "MetricsListener", "RequestMetrics", "api",
           "bus", "fit", "render", "requests", "serve"]

# the *_created series double every counter's lines and tell an operator nothing here
disable_created_metrics()

T = TypeVar("T")
_lock = threading.Lock()
_shared: dict[object, Any] = {}


def _one(kind: Callable[[CollectorRegistry], T]) -> T:
    """The process's instance of ``kind`` on the default registry (a second one could not register)."""
    with _lock:
        if kind not in _shared:
            _shared[kind] = kind(REGISTRY)
        return _shared[kind]


def requests() -> RequestMetrics:
    """This process's request metrics."""
    return _one(RequestMetrics)


def bus() -> BusMetrics:
    """This process's SmartBus link metrics."""
    return _one(BusMetrics)


def api() -> ApiMetrics:
    """This process's sbusr-api metrics."""
    return _one(ApiMetrics)
