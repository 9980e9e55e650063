"""``sys.*`` methods: ping, version, methods, reload, timers, spool, stats; and ``rpc.discover``.

The server wires this module to its state at start-up:

* :func:`bind_registry` with the current :class:`sbusr.dispatch.Registry` (again after every reload),
  so ``sys.methods`` lists what is actually served;
* :func:`set_reload_handler` with a no-argument callable that reloads the endpoints and returns a
  JSON-friendly dict describing the result (e.g. ``Registry.summary()``);
* :func:`set_report` with the no-argument callables behind ``sys.timers``, ``sys.spool`` and
  ``sys.stats`` (the server's figures for the status page: mode, workers, per-method calls and
  latency, recent errors, history, as a JSON-friendly dict).

Both live in the main process; an execution layer running methods in worker processes must run the
``sys`` namespace in the main process. The state survives ``importlib.reload`` of this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import oslo_messaging

import sbusr
from sbusr.dispatch import discovery
from sbusr.jsonrpc.errors import SERVER_ERROR, InvalidParams, RpcError


class _State:
    registry: Any = None
    reload_handler: Callable[[], Any] | None = None
    reports: dict[str, Callable[[], Any]] = {}


_state: _State = globals().get("_state") or _State()


def bind_registry(registry: Any) -> None:
    """Tell ``sys.methods`` which Registry is being served (None to unbind)."""
    _state.registry = registry


def set_reload_handler(handler: Callable[[], Any] | None) -> None:
    """Install (or with None remove) the callable behind ``sys.reload``."""
    _state.reload_handler = handler


def set_report(name: str, handler: Callable[[], Any] | None) -> None:
    """Install (or with None remove) the callable behind ``sys.<name>`` (``timers``, ``spool``)."""
    if handler is None:
        _state.reports.pop(name, None)
    else:
        _state.reports[name] = handler


def _report(name: str) -> Any:
    handler = _state.reports.get(name)
    if handler is None:
        raise RpcError(SERVER_ERROR, f"sys.{name} is not available in this process")
    return handler()


class SystemEndpoint:
    """Administrative methods in the ``sys`` namespace."""

    target = oslo_messaging.Target(namespace="sys")

    def ping(self, ctxt: Any) -> str:
        return "pong"

    def version(self, ctxt: Any) -> str:
        return sbusr.__version__

    def methods(self, ctxt: Any) -> list[str]:
        """Every JSON-RPC method name served, sorted."""
        registry = _state.registry
        if registry is None:
            raise RpcError(SERVER_ERROR, "method list not available")
        return registry.methods()

    def reload(self, ctxt: Any) -> Any:
        """Reload endpoint code through the server's handler and return its description."""
        handler = _state.reload_handler
        if handler is None:
            raise RpcError(SERVER_ERROR, "reload not available")
        return handler()

    def timers(self, ctxt: Any) -> list[dict[str, Any]]:
        """Every @timer/@cron function: schedule, next run, counts and the last outcome."""
        return _report("timers")

    def spool(self, ctxt: Any) -> dict[str, Any]:
        """The spooler's queued, running and failed job counts."""
        return _report("spool")
    def stats(self, ctxt: Any) -> dict[str, Any]:
        """The server's figures for the status page (what sbusr-api's /status shows)."""
        return {"version": sbusr.__version__, "pid": os.getpid(), **_report("stats")}


class DiscoveryEndpoint:
    """``rpc.discover``: the OpenRPC document of every method served (JSON-RPC reserves ``rpc.``)."""

    target = oslo_messaging.Target(namespace="rpc")

    def __init__(self, registry: Callable[[], Any] | None = None) -> None:
        self._registry = registry or (lambda: _state.registry)
        self._cached: tuple[Any, dict[str, Any]] | None = None

    def discover(self, ctxt: Any, namespace: str | None = None) -> dict[str, Any]:
        """The OpenRPC 1.x document describing every method this server serves.

        With ``namespace``, only that namespace's methods ("" for those without one): a SmartBus
        reply carries at most 15,999 bytes, so a large document is fetched part by part.
        """
        registry = self._registry()
        if registry is None:
            raise RpcError(SERVER_ERROR, "method list not available")
        if namespace is not None:
            if not isinstance(namespace, str):
                raise InvalidParams("namespace must be a string")
            return discovery.openrpc_document(registry, namespace=namespace)
        cached = self._cached
        if cached is None or cached[0] is not registry:  # built once per loaded registry
            cached = self._cached = (registry, discovery.openrpc_document(registry))
        return cached[1]
