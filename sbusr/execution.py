"""Where endpoint methods run: threads or a pool of worker processes, with per-call time limits.

The oslo RPCServer calls every endpoint method through ``EndpointAdapter.invoker``;
:meth:`Executor.bind` installs ours on each adapter of a registry. ``[execution] mode`` picks:

* **thread** -- every call runs directly in the oslo executor thread (one semaphore caps
  concurrent methods at ``workers``); no hand-off to another thread on the hot path. A call with a
  limit is registered with one :class:`Watchdog` thread. A Python thread cannot be killed, so a call
  that overruns is *abandoned*: the watchdog answers the caller with -32001 at once through the
  smartbus driver (:func:`sbusr.driver_smartbus.current_message`), the thread keeps running the
  method to its end (logged, its late reply dropped), and its worker slot is handed on (at most
  ``workers`` at a time; past that, capacity shrinks and an error is logged -- use process mode for
  runaway code).
* **process** -- a purpose-built pool of worker processes (:class:`ProcessPool`, the child side is
  :mod:`sbusr.worker`). ``concurrent.futures.ProcessPoolExecutor`` marks the whole pool broken when
  one worker dies and cannot kill one stuck task; ``multiprocessing.Pool`` silently loses the task
  of a dead worker (its caller waits forever) and cannot kill a stuck one either. Here each worker
  has its own socketpair, so a stuck one is SIGKILLed and replaced (uWSGI's "harakiri"), a crashed
  one costs only its in-flight call, and recycling/reloading replace workers one at a time.

``sys.*`` methods (the built-in system endpoint) always run in the server process: they touch
the server's registry. Time limits: ``[execution] call_timeout``, overridden per class or method
with :func:`limits`.
"""

from __future__ import annotations

import collections
import heapq
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from sbusr import dispatch, jsonrpc
from sbusr import limits as _limits
from sbusr import worker as worker_mod
from sbusr.driver_smartbus import current_message

LOG = logging.getLogger(__name__)

SYSTEM_MODULE = "sbusr.endpoints.system"
#: oslo executor threads beyond ``workers``: sys.* calls and calls waiting for a worker need some.
EXECUTOR_THREAD_MARGIN = 8
#: Seconds a new worker process may take to import and run worker_init before it is killed.
WORKER_START_TIMEOUT = 60.0
#: Seconds reload() waits for the new generation of workers before switching anyway.
RELOAD_TIMEOUT = 60.0
#: Seconds a retired worker gets to exit after being asked before it is killed.
RETIRE_GRACE = 5.0


# --------------------------------------------------------------------------- per-method limits
# defined in sbusr.limits, so that endpoint code can import them without the driver; kept here by name
LIMITS_ATTR = _limits.LIMITS_ATTR
Limits = _limits.Limits
limits = _limits.limits
_own_timeout = _limits.own_timeout


def is_main_process_endpoint(adapter: dispatch.EndpointAdapter) -> bool:
    """True for the built-in ``sys`` endpoint, which must run next to the server's registry."""
    return adapter.origin.kind == "builtin" and adapter.origin.module_or_path == SYSTEM_MODULE


def _label(adapter: dispatch.EndpointAdapter, name: str) -> str:
    namespace = adapter.target.namespace
    return f"{namespace}.{name}" if namespace else name


def _method_names(adapter: dispatch.EndpointAdapter) -> dict[tuple[int, Any], str]:
    """Key of each bound method the adapter hands to its invoker -> the RPC method name."""
    names: dict[tuple[int, Any], str] = {}
    for name in dispatch.adapter_methods(adapter):
        try:
            names[_fn_key(getattr(adapter.endpoint, name))] = name
        except Exception:  # an odd descriptor: the invoker falls back to __name__
            continue
    return names


def _fn_key(fn: Any) -> tuple[int, Any]:
    # Bound methods are re-created on access; (id of self, function) identifies them without
    # hashing the endpoint object (which may be unhashable).
    return id(getattr(fn, "__self__", None)), getattr(fn, "__func__", fn)


# --------------------------------------------------------------------------- base

class Executor:
    """Common interface used by ``sbusr-server``'s Service."""

    mode = "direct"

    def __init__(self, workers: int, call_timeout: float) -> None:
        self.workers = workers
        self.call_timeout = call_timeout

    def start(self) -> None:
        """Prepare workers before the first call (process mode waits for them)."""

    def bind(self, registry: dispatch.Registry) -> None:
        """Install this executor's invoker on every adapter of ``registry``."""
        for adapter in registry.adapters:
            adapter.invoker = (dispatch.direct_invoke if is_main_process_endpoint(adapter)
                               else self.invoker_for(adapter))

    def invoker_for(self, adapter: dispatch.EndpointAdapter) -> dispatch.Invoker:
        return dispatch.direct_invoke

    def default_timeout(self, adapter: dispatch.EndpointAdapter) -> float:
        own = _own_timeout(type(adapter.endpoint))
        return self.call_timeout if own is None else own

    def reconfigure(self, conf: Any) -> None:
        """Take the ``[execution]`` values a config reload may change (the options marked mutable).

        Called before :meth:`reload`: the invokers :meth:`bind` makes next read the new
        ``call_timeout``; workers started from then on get the new hook and log level.
        """
        self.call_timeout = conf.execution.call_timeout

    def reload(self) -> dict[str, Any]:
        """Make newly started calls run freshly imported code; return a JSON-friendly summary."""
        return {}

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop workers; calls still waiting for one are answered "server busy"."""


def create_executor(conf: Any) -> Executor:
    """The executor ``conf.execution`` describes (not started)."""
    group = conf.execution
    debug = bool(getattr(conf, "debug", False) or conf.server.expose_tracebacks)
    if group.mode == "process":
        return ProcessExecutor(group.workers, group.call_timeout, group.max_tasks_per_child,
                               group.worker_init, debug=debug)
    return ThreadExecutor(group.workers, group.call_timeout, group.worker_init)


def executor_pool_size(conf: Any) -> int:
    """oslo ``executor_thread_pool_size`` to use: enough threads that every worker can be kept busy
    while sys.* calls (and replies to callers whose method finished) still get a thread; in thread
    mode up to ``workers`` abandoned calls may hold threads on top of that."""
    workers = conf.execution.workers * (2 if conf.execution.mode == "thread" else 1)
    return max(int(conf.executor_thread_pool_size), workers + EXECUTOR_THREAD_MARGIN)


# --------------------------------------------------------------------------- thread mode

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

    def start(self) -> None:
        # Same config in both modes: the hook runs once, in the server process, before any call.
        error = worker_mod.run_hook(self.worker_init)
        if error is not None:
            LOG.error("worker_init %s failed in the server process: %s", self.worker_init, error)

    def reconfigure(self, conf: Any) -> None:
        super().reconfigure(conf)
        if conf.execution.worker_init != self.worker_init:
            self.worker_init = conf.execution.worker_init
            self.start()  # a new hook runs once, as at start-up

    def invoker_for(self, adapter: dispatch.EndpointAdapter) -> dispatch.Invoker:
        default = self.default_timeout(adapter)
        slots = self._slots
        limited = self._limited

        def invoke(fn: Callable[..., Any], ctxt: Any, args: tuple, kwargs: dict) -> Any:
            limits = getattr(fn, LIMITS_ATTR, None)
            timeout = default if limits is None or limits.timeout is None else limits.timeout
            if timeout:
                return limited(fn, ctxt, args, kwargs, timeout)
            with slots:
                return fn(ctxt, *args, **kwargs)

        return invoke

    def _limited(self, fn: Callable[..., Any], ctxt: Any, args: tuple, kwargs: dict, timeout: float) -> Any:
        """Run in this thread; past the limit the watchdog answers the caller (a thread cannot be killed)."""
        self._slots.acquire()
        call = _LimitedCall()
        message = current_message()
        entry = self._watchdog.arm(timeout, lambda: self._expire(call, fn, timeout, message))
        try:
            return fn(ctxt, *args, **kwargs)
        finally:
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
                raise jsonrpc.CallTimeout(f"{_fn_label(fn)} did not finish within {timeout:g} s",
                                          {"timeout": timeout}) from None

    def _expire(self, call: _LimitedCall, fn: Any, timeout: float, message: Any) -> None:
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
        error = jsonrpc.CallTimeout(f"{_fn_label(fn)} did not finish within {timeout:g} s",
                                    {"timeout": timeout})
        if message is not None:
            message.answer_early(error)
        if call.freed:
            LOG.warning("call %s from %s exceeded its %g s limit: answered %d, its thread is abandoned "
                        "(threads cannot be stopped; process mode can)", _fn_label(fn),
                        dispatch.caller_of(getattr(message, "ctxt", None)), timeout, jsonrpc.CALL_TIMEOUT)
        else:
            LOG.error("call %s from %s exceeded its %g s limit: answered %d; %d calls are stuck: capacity is "
                      "reduced until they return (use [execution] mode = process)", _fn_label(fn),
                      dispatch.caller_of(getattr(message, "ctxt", None)), timeout, jsonrpc.CALL_TIMEOUT,
                      stuck)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self.mode, "threads": self.workers, "abandoned": self._abandoned}

    def reload(self) -> dict[str, Any]:
        return self.stats()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._watchdog.close()


# --------------------------------------------------------------------------- process mode

class _Worker:
    __slots__ = ("conn", "generation", "init_error", "pid", "proc", "tasks")

    def __init__(self, proc: Any, conn: Any, pid: int, generation: int, init_error: str | None) -> None:
        self.proc = proc
        self.conn = conn
        self.pid = pid
        self.generation = generation
        self.init_error = init_error
        self.tasks = 0


class ProcessPool:
    """``size`` prestarted worker processes, each with its own socketpair; see the module docstring.

    Invariants: a worker is either idle (in ``_idle``), lent to exactly one caller, or being
    retired/killed. Replacements are started in background threads, so losing a worker never stalls
    calls on the others. ``reload()`` starts a complete new generation, switches to it when ready and
    retires each old worker once its current call is done: no call is interrupted or lost.
    """

    def __init__(self, size: int, max_tasks: int = 0, worker_init: str | None = None,
                 debug: bool = False, log_level: int | None = None) -> None:
        self.size = size
        self.max_tasks = max_tasks
        self.worker_init = worker_init
        self.debug = debug
        if log_level is None:
            log_level = logging.getLogger("sbusr").getEffectiveLevel()
        self.log_level = log_level
        self._cond = threading.Condition()
        self._idle: collections.deque[_Worker] = collections.deque()
        self._lent: set[_Worker] = set()
        self._staged: dict[int, list[_Worker]] = {}
        self._generation = 0
        self._next_generation = 0
        self._closed = False
        self._threads: set[threading.Thread] = set()
        self.started_workers = 0
        self.replaced = collections.Counter()  # reason -> count

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait: float = WORKER_START_TIMEOUT) -> bool:
        """Start ``size`` workers in parallel; True if all were ready within ``wait`` seconds."""
        for _ in range(self.size):
            self._background(self._start_and_adopt, self._generation)
        return self.wait_ready(wait)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._idle) + len(self._lent) < self.size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return not self._closed

    def reload(self, timeout: float = RELOAD_TIMEOUT) -> dict[str, Any]:
        """Start a new generation of workers and switch to it; old workers finish their calls first."""
        with self._cond:
            if self._closed:
                raise RuntimeError("pool is shut down")
            self._next_generation = generation = max(self._next_generation, self._generation) + 1
            self._staged[generation] = []
        for _ in range(self.size):
            self._background(self._start_and_adopt, generation)
        deadline = time.monotonic() + timeout
        retire: list[_Worker] = []
        with self._cond:
            staged = self._staged[generation]
            while len(staged) < self.size and not self._closed and self._next_generation == generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    LOG.error("reload: only %d of %d new workers ready after %.0f s; switching anyway",
                              len(staged), self.size, timeout)
                    break
                self._cond.wait(remaining)
            del self._staged[generation]
            if self._closed or self._next_generation != generation:  # shut down or overtaken
                retire.extend(staged)
            else:
                self._generation = generation
                retire.extend(self._idle)
                self._idle.clear()
                self._idle.extend(staged)
                self._cond.notify_all()
        for worker in retire:
            self._retire(worker, "reload")
        LOG.info("process pool reloaded: generation %d, %d workers ready", generation, len(staged))
        return self.stats()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every worker; calls in flight or waiting get "server busy (shutting down)"."""
        with self._cond:
            self._closed = True
            idle = list(self._idle)
            lent = list(self._lent)
            staged = [w for ws in self._staged.values() for w in ws]
            self._idle.clear()
            self._cond.notify_all()
        for worker in idle + staged:
            self._ask_exit(worker)
        for worker in lent:
            self._kill(worker)
        deadline = time.monotonic() + timeout
        for worker in idle + staged + lent:
            worker.proc.join(max(0.0, deadline - time.monotonic()))
            if worker.proc.exitcode is None:
                self._kill(worker)
                worker.proc.join(1.0)
        for thread in list(self._threads):
            thread.join(max(0.1, deadline - time.monotonic()))

    # ------------------------------------------------------------------ calls

    def call(self, origin: tuple, name: str, ctxt: Any, args: tuple, kwargs: dict,
             timeout: float = 0.0, label: str | None = None) -> Any:
        """Run ``name`` of the endpoint ``origin`` in a worker; returns its JSON-safe result.

        Raises the method's RpcError, RpcError(-32000) for other exceptions, CallTimeout (the
        worker is killed and replaced), WorkerCrashed, or ServerBusy when shutting down.
        """
        label = label or name
        worker = self._acquire()
        if worker.init_error is not None:
            self._release(worker)
            raise jsonrpc.InternalError(f"worker start-up hook failed: {worker.init_error}")
        try:
            worker.conn.send((tuple(origin), name, ctxt, args, kwargs))
        except (OSError, EOFError):
            raise self._lost(worker, label) from None
        except Exception as exc:  # the arguments did not pickle; the worker saw nothing
            self._release(worker)
            raise jsonrpc.InternalError(f"cannot send the call to a worker: {exc}") from None
        try:
            if timeout > 0 and not worker.conn.poll(timeout):
                self._kill_and_replace(worker, "timeout")
                LOG.warning("call %s from %s exceeded its %g s limit: answered %d; worker pid %d killed and "
                            "replaced", label, dispatch.caller_of(ctxt), timeout, jsonrpc.CALL_TIMEOUT,
                            worker.pid)
                raise jsonrpc.CallTimeout(f"{label} did not finish within {timeout:g} s",
                                          {"timeout": timeout})
            reply = worker.conn.recv()
        except (OSError, EOFError):
            raise self._lost(worker, label) from None
        self._release(worker)
        return self._unpack(reply, label, worker.pid)

    def _unpack(self, reply: tuple, label: str, pid: int) -> Any:
        kind = reply[0]
        if kind == "ok":
            return reply[1]
        if kind == "rpc":
            raise jsonrpc.RpcError(reply[1], reply[2], reply[3])
        _kind, type_name, message, tb = reply
        LOG.error("method %s raised in worker pid %d:\n%s", label, pid, tb.rstrip())
        data: dict[str, Any] = {"type": type_name}
        if self.debug:
            data["traceback"] = tb
        raise jsonrpc.MethodRaised(message, data)  # logged above: the dispatcher does not log it again

    def _lost(self, worker: _Worker, label: str) -> jsonrpc.RpcError:
        """The worker's pipe broke mid-call: it died (or we are shutting down and killed it)."""
        with self._cond:
            closed = self._closed
        if closed:
            return jsonrpc.ServerBusy("server is shutting down")
        worker.proc.join(1.0)  # EOF: it is exiting or gone; its status makes the log useful
        status = _describe_exit(worker.proc.exitcode)
        self._kill_and_replace(worker, "crash")
        LOG.error("worker pid %d died (%s) while running %s; replacing it", worker.pid, status, label)
        return jsonrpc.WorkerCrashed(f"the worker running {label} died ({status})", {"exit": status})

    def _acquire(self) -> _Worker:
        stale: list[_Worker] = []
        try:
            with self._cond:
                while True:
                    if self._closed:
                        raise jsonrpc.ServerBusy("server is shutting down")
                    while self._idle:
                        worker = self._idle.popleft()
                        if worker.generation != self._generation:
                            stale.append(worker)
                            continue
                        self._lent.add(worker)
                        return worker
                    self._cond.wait()
        finally:
            for worker in stale:
                self._retire(worker, "reload")

    def _release(self, worker: _Worker) -> None:
        worker.tasks += 1
        reason = None
        with self._cond:
            self._lent.discard(worker)
            if self._closed:
                reason = "shutdown"
            elif worker.generation != self._generation:
                reason = "reload"
            elif self.max_tasks and worker.tasks >= self.max_tasks:
                reason = "max_tasks_per_child"
            else:
                self._idle.append(worker)
                self._cond.notify()
                return
        if reason == "max_tasks_per_child":
            self._replace(worker.generation, reason)
            LOG.info("worker pid %d ran %d calls; recycling it", worker.pid, worker.tasks)
        self._retire(worker, reason)

    # ------------------------------------------------------------------ workers

    def _background(self, target: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._cond:
                    self._threads.discard(thread)

        thread = threading.Thread(target=run, name="sbusr-pool", daemon=True)
        with self._cond:
            self._threads.add(thread)
        thread.start()

    def _replace(self, generation: int, reason: str) -> None:
        with self._cond:
            if self._closed or generation != self._generation:
                return
            self.replaced[reason] += 1
        self._background(self._start_and_adopt, generation)

    def _obsolete(self, generation: int) -> bool:
        return self._closed or generation < self._generation or (
            generation > self._generation and generation not in self._staged)

    def _start_and_adopt(self, generation: int) -> None:
        worker = self._start_worker(generation)
        if worker is None:
            return
        with self._cond:
            if not self._obsolete(generation):
                if generation == self._generation:
                    self._idle.append(worker)
                else:
                    self._staged[generation].append(worker)
                self._cond.notify_all()
                return
        self._retire(worker, "obsolete")

    def _start_worker(self, generation: int) -> _Worker | None:
        """Spawn one worker and wait for its "ready"; retries with back-off until obsolete."""
        delay = 0.5
        while True:
            with self._cond:
                if self._obsolete(generation):
                    return None
            proc = None
            try:
                proc, conn = _launch(self.worker_init, self.log_level)
                hello = self._wait_hello(conn, generation)
                if hello is None:
                    _kill_proc(proc)
                    conn.close()
                    return None
                _tag, pid, init_error = hello
                with self._cond:
                    self.started_workers += 1
                if init_error is not None:
                    LOG.error("worker pid %d: worker_init %s failed (%s); its calls get an error",
                              pid, self.worker_init, init_error)
                LOG.debug("worker pid %d (generation %d) ready", pid, generation)
                return _Worker(proc, conn, pid, generation, init_error)
            except Exception as exc:
                LOG.error("could not start a worker process (%s); retrying in %.1f s", exc, delay)
                if proc is not None:
                    _kill_proc(proc)
            with self._cond:
                self._cond.wait_for(lambda g=generation: self._obsolete(g), delay)
            delay = min(delay * 2, 10.0)

    def _wait_hello(self, conn: Any, generation: int) -> tuple | None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not conn.poll(0.2):
            with self._cond:
                if self._obsolete(generation):
                    return None
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready within {WORKER_START_TIMEOUT:g} s")
        hello = conn.recv()  # EOFError if it died while starting
        if not (isinstance(hello, tuple) and hello and hello[0] == "ready"):
            raise RuntimeError(f"unexpected first message from a worker: {hello!r}")
        return hello

    def _ask_exit(self, worker: _Worker) -> None:
        try:
            worker.conn.send(None)
        except (OSError, ValueError):
            pass
        worker.conn.close()

    def _retire(self, worker: _Worker, reason: str) -> None:
        """Ask an idle worker to exit; reap it in the background (killed if it lingers)."""
        LOG.debug("retiring worker pid %d (%s)", worker.pid, reason)
        self._ask_exit(worker)
        self._background(_reap, worker.proc, RETIRE_GRACE)

    def _kill(self, worker: _Worker) -> None:
        _kill_proc(worker.proc)
        worker.conn.close()

    def _kill_and_replace(self, worker: _Worker, reason: str) -> None:
        with self._cond:
            self._lent.discard(worker)
        self._kill(worker)
        self._background(_reap, worker.proc, 0.0)
        self._replace(worker.generation, reason)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"mode": "process", "generation": self._generation, "idle": len(self._idle),
                    "busy": len(self._lent), "started": self.started_workers,
                    "replaced": dict(self.replaced)}

    def pids(self) -> list[int]:
        with self._cond:
            return sorted(w.pid for w in [*self._idle, *self._lent])


class _Proc:
    """The bits of a worker's subprocess.Popen the pool needs (multiprocessing.Process-like)."""

    __slots__ = ("popen",)

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def join(self, timeout: float | None = None) -> None:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Nothing to release: Popen holds no pipes here."""


_BOOTSTRAP = ("import warnings; warnings.filterwarnings('ignore', message='(?s).*eventlet'); "
              "from sbusr.worker import bootstrap; bootstrap({fd})")


def _launch(worker_init: str | None, log_level: int) -> tuple[_Proc, Connection]:
    """Start ``python -c 'sbusr.worker.bootstrap(fd)'`` with one end of a socketpair.

    A fresh interpreter (like multiprocessing's "spawn": the server has threads, so forking it
    would be unsafe), but started through subprocess: multiprocessing's spawn would also re-run
    the parent's ``__main__`` module in every worker. The child gets our sys.path first.
    """
    ours, theirs = socket.socketpair()
    try:
        env = dict(os.environ)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(worker_mod.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        popen = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP.format(fd=theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env, close_fds=True)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()  # else our copy would hide the worker's death (no EOF)
    conn = Connection(ours.detach())
    try:
        conn.send({"sys_path": list(sys.path), "worker_init": worker_init, "parent_pid": os.getpid(),
                   "log_level": log_level})
    except OSError:
        pass  # it died at once: reported as EOF when waiting for its hello
    return _Proc(popen), conn


def _kill_proc(proc: Any) -> None:
    if proc.pid is not None and proc.exitcode is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _reap(proc: Any, grace: float) -> None:
    proc.join(grace)
    if proc.exitcode is None:
        _kill_proc(proc)
        proc.join(5.0)
    if proc.exitcode is not None:
        proc.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessExecutor(Executor):
    """Process mode (see the module docstring)."""

    mode = "process"

    def __init__(self, workers: int, call_timeout: float, max_tasks_per_child: int = 0,
                 worker_init: str | None = None, debug: bool = False) -> None:
        super().__init__(workers, call_timeout)
        self.pool = ProcessPool(workers, max_tasks_per_child, worker_init, debug=debug)

    def start(self) -> None:
        if not self.pool.start():
            LOG.warning("not all %d worker processes were ready in time; starting anyway", self.workers)

    def invoker_for(self, adapter: dispatch.EndpointAdapter) -> dispatch.Invoker:
        default = self.default_timeout(adapter)
        origin = tuple(adapter.origin)
        names = _method_names(adapter)
        call = self.pool.call

        def invoke(fn: Callable[..., Any], ctxt: Any, args: tuple, kwargs: dict) -> Any:
            limits_ = getattr(fn, LIMITS_ATTR, None)
            timeout = default if limits_ is None or limits_.timeout is None else limits_.timeout
            name = names.get(_fn_key(fn)) or fn.__name__
            return call(origin, name, ctxt, args, kwargs, timeout, _label(adapter, name))

        return invoke

    def reconfigure(self, conf: Any) -> None:
        super().reconfigure(conf)
        self.pool.max_tasks = conf.execution.max_tasks_per_child  # read after every call
        self.pool.worker_init = conf.execution.worker_init  # read when a worker starts
        self.pool.log_level = logging.getLogger("sbusr").getEffectiveLevel()

    def reload(self) -> dict[str, Any]:
        return self.pool.reload()

    def stats(self) -> dict[str, Any]:
        return self.pool.stats()

    def shutdown(self, timeout: float = 5.0) -> None:
        self.pool.shutdown(timeout)


def alive(pids: Iterable[int]) -> list[int]:
    """The pids among ``pids`` that still exist (test and diagnostics helper)."""
    result = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        result.append(pid)
    return result
