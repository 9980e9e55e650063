"""The child side of process mode: one worker process running endpoint methods sent over a socket.

The parent (:class:`sbusr.execution.ProcessPool`) starts it as ``python -c ...bootstrap(fd)`` with
one end of a socketpair, so the worker is a fresh interpreter: endpoint code is imported here from
source (that is what makes recycling and reloading pick up edited files) and nothing of the
parent's threads or locks is inherited.

Protocol (pickled tuples; everything a worker sends back is JSON-safe, since a method's result
may be an object that does not pickle):

* worker -> parent once: ``("ready", pid, init_error or None)``
* parent -> worker: ``(origin tuple, method name, ctxt, args, kwargs)``; ``None`` asks it to exit
* worker -> parent per call: ``("ok", result)`` | ``("rpc", code, message, data)`` (an RpcError or a
  result JSON cannot encode) | ``("exc", type qualname, message, traceback text)``

A worker exits on ``None``, on EOF (the parent closed its end or died) and, while busy, when a
watchdog thread sees it has been re-parented (the server died): no orphans left running methods.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from sbusr import dispatch, jsonrpc

LOG = logging.getLogger("sbusr.worker")

#: Seconds between checks that the server process is still our parent.
PARENT_CHECK_INTERVAL = 0.5


def load_hook(spec: str) -> Any:
    """``"package.module:function"`` -> the callable (raises ImportError/AttributeError/ValueError)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"worker_init must look like 'module:function', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"worker_init {spec!r} is not callable")
    return obj


def run_hook(spec: str | None) -> str | None:
    """Run the start-up hook; return None, or a one-line description of why it failed (logged)."""
    if not spec:
        return None
    try:
        load_hook(spec)()
    except (Exception, SystemExit) as exc:
        LOG.exception("worker_init %s failed", spec)
        return f"{type(exc).__name__}: {exc}"
    return None


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(70)  # the server is gone: stop whatever the method is doing
        threading.Event().wait(PARENT_CHECK_INTERVAL)


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data (jsonrpc's conversions applied); None if it cannot be encoded."""
    decoded = json.loads(jsonrpc.dumps(jsonrpc.result_response(None, value)))
    return decoded.get("result")


class _Endpoints:
    """Endpoint objects re-created from their origins on first use (cached for the worker's life)."""

    def __init__(self) -> None:
        self._cache: dict[dispatch.EndpointOrigin, tuple[Any, frozenset[str]]] = {}

    def get(self, origin: dispatch.EndpointOrigin) -> tuple[Any, frozenset[str]]:
        entry = self._cache.get(origin)
        if entry is None:
            adapter = dispatch.adapter_from_origin(origin)
            entry = (adapter.endpoint, frozenset(dispatch.adapter_methods(adapter)))
            self._cache[origin] = entry
        return entry


def execute(message: tuple, endpoints: _Endpoints) -> tuple:
    """Run one call and describe its outcome as a JSON-safe reply tuple (never raises)."""
    origin_fields, name, ctxt, args, kwargs = message
    origin = dispatch.EndpointOrigin(*origin_fields)
    try:
        endpoint, names = endpoints.get(origin)
    except (Exception, SystemExit) as exc:
        LOG.exception("cannot load endpoint %s in worker", origin)
        return ("rpc", jsonrpc.INTERNAL_ERROR, f"cannot load endpoint {origin} in worker: "
                f"{type(exc).__name__}: {exc}", None)
    if name not in names:
        return ("rpc", jsonrpc.METHOD_NOT_FOUND, f"Method not found: {name} (not in the reloaded {origin})",
                None)
    try:
        result = getattr(endpoint, name)(ctxt, *args, **kwargs)
    except jsonrpc.RpcError as exc:
        return ("rpc", exc.code, exc.message, json_safe(exc.data))
    except (Exception, SystemExit) as exc:
        cls = type(exc)
        return ("exc", f"{cls.__module__}.{cls.__qualname__}", str(exc) or cls.__name__,
                "".join(traceback.format_exception(cls, exc, exc.__traceback__)))
    decoded = json.loads(jsonrpc.dumps(jsonrpc.result_response(None, result)))
    if "error" in decoded:
        error = decoded["error"]
        return ("rpc", error["code"], error["message"], error.get("data"))
    return ("ok", decoded["result"])


def bootstrap(fd: int) -> None:
    """``python -c`` entry point: adopt the parent's sys.path and settings, then serve."""
    conn = Connection(fd)
    try:
        settings = conn.recv()
    except (EOFError, OSError):
        return
    sys.path[:] = settings["sys_path"]
    main(conn, settings["worker_init"], settings["parent_pid"], settings["log_level"])


def main(conn: Connection, init_spec: str | None, parent_pid: int, log_level: int) -> None:
    """Run calls from ``conn`` until told to stop or the server goes away."""
    # Ctrl-C or a closed terminal signals the whole process group; the server decides for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s [worker] %(message)s")
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    init_error = run_hook(init_spec)
    endpoints = _Endpoints()
    try:
        conn.send(("ready", os.getpid(), init_error))
        while True:
            message = conn.recv()
            if message is None:
                return
            if init_error is not None:
                conn.send(("rpc", jsonrpc.INTERNAL_ERROR, f"worker start-up hook failed: {init_error}", None))
                continue
            conn.send(execute(message, endpoints))
    except (EOFError, OSError):
        return  # the parent closed the pipe or died
