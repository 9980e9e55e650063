"""Thread mode: endpoint methods run in the RPCServer's executor threads of one process.

Every call runs directly in the oslo executor thread (one semaphore caps concurrent methods at
``workers``); there is no hand-off to another thread on the hot path. A call with a limit is
registered with one :class:`Watchdog` thread. A Python thread cannot be killed, so a call that
overruns is *abandoned*: the watchdog answers the caller with -32001 at once through the smartbus
driver (:func:`sbusr.dispatch.current_call`), the thread keeps running the method to its
end (logged, its late reply dropped), and its worker slot is handed on (at most ``workers`` at a
time; past that, capacity shrinks and an error is logged -- use process mode for runaway code).

:class:`Executor` is also the base the process-mode worker uses to bind its invokers.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from sbusr import dispatch
from sbusr.dispatch import aio
from sbusr.dispatch.context import CallContext
from sbusr.execution import hooks
from sbusr.execution.home import HomeThread
from sbusr.execution.limits import LIMITS_ATTR, class_timeout
from sbusr.jsonrpc.errors import CALL_TIMEOUT, CallTimeout

LOG = logging.getLogger("sbusr.execution")

SYSTEM_MODULE = "sbusr.endpoints.system"
#: oslo executor threads beyond ``workers``: sys.* calls and replies need some.
EXECUTOR_THREAD_MARGIN = 8


def is_system_endpoint(adapter: dispatch.EndpointAdapter) -> bool:
    """True for the built-in ``sys`` endpoint: never limited (sys.reload waits for a reload)."""
    return adapter.origin.kind == "builtin" and adapter.origin.module_or_path == SYSTEM_MODULE


class Executor:
    """Installs invokers on a registry's adapters; the hooks sbusr-server's Service calls."""

    mode = "direct"

    def __init__(self, workers: int, call_timeout: float) -> None:
        self.workers = workers
        self.call_timeout = call_timeout

    def start(self) -> None:
        """Prepare before the first call."""

    def bind(self, registry: dispatch.Registry) -> None:
        """Install this executor's invoker on every adapter of ``registry``."""
        for adapter in registry.adapters:
            adapter.invoker = (self.system_invoker(adapter) if is_system_endpoint(adapter)
                               else self.invoker_for(adapter))

    def system_invoker(self, adapter: dispatch.EndpointAdapter) -> dispatch.Invoker:
        return dispatch.direct_invoke

    def invoker_for(self, adapter: dispatch.EndpointAdapter) -> dispatch.Invoker:
        return dispatch.direct_invoke

    def default_timeout(self, adapter: dispatch.EndpointAdapter) -> float:
        return class_timeout(adapter.endpoint, self.call_timeout)

    def reconfigure(self, conf: cfg.ConfigOpts) -> None:
        """Take the ``[execution]`` values a config reload may change (the options marked mutable);
        the invokers :meth:`bind` makes next read the new ``call_timeout``."""
        self.call_timeout = conf.execution.call_timeout

    def reload(self) -> dict[str, Any]:
        """Make newly started calls run freshly imported code; return a JSON-friendly summary."""
        return {}

    def shutdown(self, timeout: float = 5.0) -> None:
        """Release what start() set up."""


def executor_pool_size(conf: cfg.ConfigOpts) -> int:
    """oslo ``executor_thread_pool_size`` for thread mode: every worker slot busy, up to ``workers``
    abandoned calls holding threads on top, and still threads for sys.* calls and replies."""
    return max(int(conf.executor_thread_pool_size), 2 * conf.execution.workers + EXECUTOR_THREAD_MARGIN)


class Watchdog:
    """One thread that fires actions at deadlines; arming and disarming cost a heap push and a flag."""

    #: rebuild the heap once this many disarmed entries wait in it (and they are the majority)
    PURGE_AT = 4096

    def __init__(self, name: str = "sbusr-watchdog") -> None:
        self._heap: list[tuple[float, int, list[Any]]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._disarmed = 0
        self._name = name
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, timeout: float, action: Callable[[], None]) -> list[Any]:
        entry: list[Any] = [action]  # entry[0] = None once disarmed
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + timeout, self._seq, entry))
            if self._heap[0][2] is entry:
                self._cond.notify()
        return entry

    def disarm(self, entry: list[Any]) -> None:
        """Cancel; the entry leaves the heap when due, or in a purge once many have piled up."""
        entry[0] = None
        with self._cond:
            self._disarmed += 1
            if self._disarmed >= self.PURGE_AT and self._disarmed * 2 > len(self._heap):
                self._heap = [item for item in self._heap if item[2][0] is not None]
                heapq.heapify(self._heap)
                self._disarmed = 0

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    while self._heap and self._heap[0][2][0] is None:
                        heapq.heappop(self._heap)  # disarmed
                        self._disarmed = max(0, self._disarmed - 1)
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._closed:
                    return
                _, _, entry = heapq.heappop(self._heap)
                action, entry[0] = entry[0], None
            if action is not None:
                try:
                    action()
                except Exception:
                    LOG.exception("watchdog action failed")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()


class _LimitedCall:
    __slots__ = ("freed", "started", "state")

    def __init__(self) -> None:
        self.state = "running"  # running -> done | expired
        self.freed = False  # its worker slot was handed on when it expired
        self.started = time.monotonic()


def _fn_label(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class ThreadExecutor(Executor):
    """Thread mode (see the module docstring)."""

    mode = "thread"

    def __init__(self, workers: int, call_timeout: float, worker_init: str | None = None) -> None:
        super().__init__(workers, call_timeout)
        self.worker_init = worker_init
        self._slots = threading.Semaphore(workers)
        self._lock = threading.Lock()
        self._abandoned = 0  # expired calls whose slot was handed on and that still run
        self._watchdog = Watchdog()
        #: with one worker and a worker_init, the thread both run on (sbusr.execution.home)
        self._home: HomeThread | None = None

    def start(self) -> None:
        """Run the hook once, in the server process, before any call; hooks.BootFailed if it raises
        (as a process-mode worker whose hook raises, the server cannot serve)."""
        self._require_hook(self.worker_init)

    def _require_hook(self, spec: str | None) -> None:
        """The hook on the methods' own thread when there is one worker (sbusr.execution.home)."""
        if spec and self.workers == 1:
            if self._home is None:
                self._home = HomeThread()
            self._home.run(hooks.require_hook, spec)
        else:
            hooks.require_hook(spec)

    def reconfigure(self, conf: cfg.ConfigOpts) -> None:
        """hooks.BootFailed when a changed hook raises: the reload stops there, nothing changed."""
        if conf.execution.worker_init != self.worker_init:
            self._require_hook(conf.execution.worker_init)  # a new hook runs once, as at start-up
            self.worker_init = conf.execution.worker_init
        super().reconfigure(conf)

    def invoker_for(self, adapter: dispatch.EndpointAdapter) -> dispatch.Invoker:
        default = self.default_timeout(adapter)
        slots = self._slots
        limited = self._limited

        def invoke(fn: Callable[..., Any], ctxt: Any, args: tuple, kwargs: dict) -> Any:
            limits = getattr(fn, LIMITS_ATTR, None)
            timeout = default if limits is None or limits.timeout is None else limits.timeout
            if timeout:
                if isinstance(ctxt, CallContext):
                    ctxt.set_timeout(timeout)
                return limited(fn, ctxt, args, kwargs, timeout)
            with slots:
                return self._run(fn, ctxt, args, kwargs)

        return invoke

    def _run(self, fn: Callable[..., Any], ctxt: Any, args: tuple, kwargs: dict) -> Any:
        home = self._home
        if home is None:
            return fn(ctxt, *args, **kwargs)
        return home.run(fn, ctxt, *args, **kwargs)

    def _limited(self, fn: Callable[..., Any], ctxt: Any, args: tuple, kwargs: dict, timeout: float) -> Any:
        """Run in this thread; past the limit the watchdog answers the caller (a thread cannot be killed)."""
        self._slots.acquire()
        call = _LimitedCall()
        message = dispatch.current_call()
        scope = aio.CancelScope()  # an async method's task is cancelled when it overruns
        token = aio.enter_scope(scope)
        entry = self._watchdog.arm(timeout, lambda: self._expire(call, fn, timeout, message, scope))
        try:
            return self._run(fn, ctxt, args, kwargs)
        finally:
            aio.leave_scope(token)
            self._end_limited(call, fn, timeout, entry)

    def _end_limited(self, call: _LimitedCall, fn: Callable[..., Any], timeout: float,
                     entry: list[Any]) -> None:
        """Disarm, hand the worker slot back, and raise -32001 if the call had expired."""
        self._watchdog.disarm(entry)
        with self._lock:
            expired = call.state == "expired"
            call.state = "done"
            if call.freed:
                self._abandoned -= 1
        if not call.freed:
            self._slots.release()
        if expired:
            LOG.warning("abandoned call %s finished after %.1f s; its result was discarded",
                        _fn_label(fn), time.monotonic() - call.started)
            # the caller already has the timeout; this raise answers on transports that cannot
            # be answered early
            raise CallTimeout(f"{_fn_label(fn)} did not finish within {timeout:g} s",
                                      {"timeout": timeout}) from None

    def _expire(self, call: _LimitedCall, fn: Any, timeout: float, message: Any,
                scope: aio.CancelScope) -> None:
        with self._lock:
            if call.state != "running":
                return
            call.state = "expired"
            if self._abandoned < self.workers:
                self._abandoned += 1
                call.freed = True
            stuck = self._abandoned
        if call.freed:
            self._slots.release()  # another call may run while this thread is stuck
        error = CallTimeout(f"{_fn_label(fn)} did not finish within {timeout:g} s",
                                    {"timeout": timeout})
        if message is not None:
            message.answer_early(error)
        scope.cancel()  # an async method stops at its next await; a thread cannot be stopped
        if call.freed:
            LOG.warning("call %s from %s exceeded its %g s limit: answered %d, its thread is abandoned "
                        "(threads cannot be stopped; process mode can)", _fn_label(fn),
                        dispatch.caller_of(getattr(message, "ctxt", None)), timeout, CALL_TIMEOUT)
        else:
            LOG.error("call %s from %s exceeded its %g s limit: answered %d; %d calls are stuck: capacity is "
                      "reduced until they return (use [execution] mode = process)", _fn_label(fn),
                      dispatch.caller_of(getattr(message, "ctxt", None)), timeout, CALL_TIMEOUT,
                      stuck)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self.mode, "threads": self.workers, "abandoned": self._abandoned}

    def reload(self) -> dict[str, Any]:
        return self.stats()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._watchdog.close()
        if self._home is not None:
            self._home.close()
