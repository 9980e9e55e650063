"""``call()``: run an endpoint method through the server's own dispatch, with no bus.

The request goes through what sbusr-server uses: ``parse`` (method-name and params
rules), the JSON-RPC -> oslo message mapping, oslo.messaging's ``RPCDispatcher`` with sbusr's
access policy and endpoint adapters (parameter binding), the thread-mode execution layer
(``@limits``, ``worker_init``) and the reply's JSON encoding.

As on the server, a method that overruns its time limit is answered -32001 at the limit (the test
goes on; the method's thread is left to finish), and the server's thread rule holds
(:mod:`sbusr.execution.home`): with one method at a time (process mode's default ``threads = 1``,
or ``workers = 1``) ``worker_init`` and the methods share one thread; otherwise each call runs on a
thread of its own, so an object bound to ``worker_init``'s thread fails here as it would there.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import json
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_messaging.rpc import dispatcher as rpc_dispatcher

from sbusr import dispatch, execution, opts
from sbusr.dispatch.adapter import OriginKind
from sbusr.endpoints import system
from sbusr.execution.home import one_thread
from sbusr.jsonrpc.encoding import dumps
from sbusr.jsonrpc.errors import METHOD_NOT_FOUND, CallTimeout, RpcError, error_from_exception
from sbusr.jsonrpc.protocol import Call, oslo_message, parse, result_response
from sbusr.spooler import jobs
from sbusr.spooler.runner import settle
from sbusr.timers import schedule

#: the caller a flow on IPSC 0, process 0 would be
DEFAULT_SOURCE = {"unit": 0, "client": 0, "type": 2}


@dataclass
class _Incoming:
    """What oslo's dispatcher reads of an incoming message; the execution layer answers an
    overrunning call early through :meth:`answer_early`, as it does on the bus."""

    ctxt: dict[str, Any]
    message: dict[str, Any]
    client_timeout: float | None = None
    answer: concurrent.futures.Future[Any] | None = None

    def answer_early(self, error: BaseException) -> None:
        if self.answer is not None and not self.answer.done():
            try:
                self.answer.set_exception(error)
            except concurrent.futures.InvalidStateError:
                pass


def _split(endpoints: Any) -> tuple[list[str], list[str], list[Any]]:
    """folders, module names and endpoint objects in ``endpoints``."""
    items: Iterable[Any] = [endpoints] if isinstance(endpoints, (str, os.PathLike)) or hasattr(
        endpoints, "target") else endpoints
    folders: list[str] = []
    modules: list[str] = []
    objects: list[Any] = []
    for item in items:
        if isinstance(item, os.PathLike) or (isinstance(item, str) and os.path.isdir(item)):
            folders.append(os.fspath(item))
        elif isinstance(item, str):
            modules.append(item)
        elif isinstance(getattr(item, "target", None), oslo_messaging.Target):
            objects.append(item)
        else:
            raise TypeError(f"not a folder, a module name or an endpoint object: {item!r}")
    return folders, modules, objects


class _Kit:
    """Stands for the endpoint a tick or a job runs under (no class limits: ``call_timeout``)."""

    target = oslo_messaging.Target(namespace="sbusr.testing")


class Methods:
    """Endpoints loaded once, called many times (module-level state lives on between calls)."""

    def __init__(self, endpoints: Any, config: dict[str, dict[str, Any]] | None = None) -> None:
        folders, modules, objects = _split(endpoints)
        conf = cfg.ConfigOpts()
        opts.register_opts(conf)
        conf([], project="sbusr", default_config_files=[])
        conf.set_override("directories", folders, group="endpoints")
        conf.set_override("modules", modules, group="endpoints")
        conf.set_override("entry_points", False, group="endpoints")
        for group, values in (config or {}).items():
            for name, value in values.items():
                conf.set_override(name, value, group=None if group == "DEFAULT" else group)
        if one_thread(conf):  # the thread-mode executor gives worker_init and the methods one thread
            conf.set_override("workers", 1, group="execution")
        conf.set_override("mode", "thread", group="execution")
        self.conf = conf
        self._spool_dir = os.fspath(conf.spooler.directory) if conf.spooler.directory else None
        if self._spool_dir:  # .spool() in the methods stores jobs there (see queued_jobs)
            jobs.configure(self._spool_dir)
        loaded = dispatch.load_endpoints(conf)
        if loaded.errors:
            raise ImportError("; ".join(f"{e.source}: {e.error}" for e in loaded.errors))
        adapters = loaded.adapters + [
            dispatch.EndpointAdapter(obj, dispatch.EndpointOrigin(OriginKind.INSTANCE, type(obj).__module__,
                                                                  type(obj).__qualname__))
            for obj in objects]
        self.registry = dispatch.Registry(adapters, [], loaded.modules)
        self.executor = execution.create_executor(conf)
        self.executor.start()
        self.executor.bind(self.registry)
        # rpc.discover describes the loaded methods, as sbusr-server's describes its own
        discover = dispatch.EndpointAdapter(
            system.DiscoveryEndpoint(lambda: self.registry),
            dispatch.EndpointOrigin(OriginKind.BUILTIN, system.__name__, "DiscoveryEndpoint"))
        #: what timer ticks and spooled jobs run as (for the executor's invoker)
        self._kit_adapter = dispatch.EndpointAdapter(
            _Kit(), dispatch.EndpointOrigin(OriginKind.INSTANCE, __name__, "_Kit"))
        self._dispatcher = rpc_dispatcher.RPCDispatcher(
            [*self.registry.adapters, discover], oslo_messaging.NoOpSerializer(), dispatch.AccessPolicy)

    def methods(self) -> list[str]:
        return self.registry.methods()

    def discover(self) -> dict[str, Any]:
        """The OpenRPC document of the loaded methods (what ``rpc.discover`` answers)."""
        return self.call("rpc.discover")
    # ------------------------------------------------------------------ timers and spooled jobs

    def timers(self) -> list[str]:
        """The names of the loaded ``@timer``/``@cron`` functions (as ``sys.timers`` shows them)."""
        return [entry.name for entry in schedule.find_timers(self.registry.modules)]

    def run_timer(self, name: str) -> None:
        """Run one tick of timer ``name`` (``"housekeeping.refresh"`` or just ``"refresh"``) as the
        server does: on a method thread, with ``call_timeout``. Raises what the function raised, or
        RpcError -32001 at the limit."""
        entries = [e for e in schedule.find_timers(self.registry.modules) if name in (e.name, e.qualname)]
        if len(entries) != 1:
            raise LookupError(f"{len(entries) or 'no'} timers named {name!r}; loaded: {self.timers()}")
        module = next(m for _k, _s, m in self.registry.modules if m.__name__ == entries[0].module)
        func = getattr(module, entries[0].qualname)

        def tick(ctxt: Any) -> None:
            func()

        tick.__qualname__ = entries[0].name
        self._run_as_call(tick, {}, f"sbusr.timer.run {entries[0].name}")

    def run_job(self, job_id: str | None = None) -> dict[str, Any]:
        """Run the first queued job (or ``job_id``), due or not, as a spooler process does: with its
        function's time limit, then done (removed), retried (back in the queue) or failed (in
        ``failed/``). Returns ``{"id", "task", "outcome": "done"|"retry"|"failed", "error"}``."""
        if self._spool_dir is None:
            raise RuntimeError('no spool directory: Methods(..., config={"spooler": {"directory": d}})')
        store = jobs.JobStore(self._spool_dir)
        job = store.take(job_id)
        if job is None:
            raise LookupError(f"no queued job{f' {job_id}' if job_id else ''} in {self._spool_dir}")
        functions, _clashes = jobs.find_spool_functions(self.registry.modules)
        func = functions.get(jobs.normalize_task(job.task))
        if func is None:
            store.put_back(job)
            raise LookupError(f"no @spool function named {job.task}; loaded: {sorted(functions)}")
        label = f"{func.__qualname__}[{job.id}]"

        def run(ctxt: Any, **kwargs: Any) -> None:
            func(**kwargs)

        functools.update_wrapper(run, func)  # its @limits
        error: BaseException | None = None
        try:
            self._run_as_call(run, job.data.get("kwargs") or {}, label)
        except (Exception, SystemExit) as exc:
            error = exc
        if isinstance(error, CallTimeout):  # the spooler kills the process: failed/
            store.fail(job, "time limit exceeded", "")
            return {"id": job.id, "task": job.task, "outcome": "failed", "error": "time limit exceeded"}
        spooler = self.conf.spooler
        outcome = settle(store, job, label, error, spooler.max_retries, spooler.retry_delay)
        return {"id": job.id, "task": job.task, "outcome": outcome,
                "error": None if error is None else f"{type(error).__name__}: {error}"}

    def _run_as_call(self, fn: Callable[..., Any], kwargs: dict[str, Any], label: str) -> Any:
        """``fn(ctxt, **kwargs)`` the way the executor runs a method: its thread rule, its limit."""
        invoke = self.executor.invoker_for(self._kit_adapter)
        ctxt = {"request_id": label, "source": dict(DEFAULT_SOURCE)}
        answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        incoming = _Incoming(ctxt, {"method": label, "args": kwargs}, answer=answer)

        def work() -> Any:
            return invoke(fn, ctxt, (), kwargs)

        self._start(incoming, work)
        return answer.result()

    @staticmethod
    def _start(incoming: _Incoming, work: Callable[[], Any]) -> None:
        """``work()`` on a thread of its own, as on an executor thread of the server, serving
        ``incoming``; its outcome goes to ``incoming.answer`` unless it was answered early."""
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(Methods._serve, incoming, work), name="sbusr-test-call",
                         daemon=True).start()

    @staticmethod
    def _serve(incoming: _Incoming, work: Callable[[], Any]) -> None:
        answer = incoming.answer
        assert answer is not None
        try:
            with dispatch.serving(incoming):
                result = work()
        except BaseException as exc:
            if not answer.done():
                try:
                    answer.set_exception(exc)
                except concurrent.futures.InvalidStateError:
                    pass
        else:
            if not answer.done():
                try:
                    answer.set_result(result)
                except concurrent.futures.InvalidStateError:
                    pass

    def close(self) -> None:
        """Release what loading opened: the executor's threads, the spool directory of ``.spool()``."""
        self.executor.shutdown()
        if self._spool_dir is not None and jobs.configured() == self._spool_dir:
            jobs.configure(None)

    def __enter__(self) -> Methods:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, params: list[Any] | dict[str, Any] | None = None, *,
             source: dict[str, int] | None = None, request_id: Any = "test",
             parse_float: Any = None) -> Any:
        """The decoded JSON result, or :class:`sbusr.jsonrpc.errors.RpcError` with the server's code.

        ``parse_float=decimal.Decimal`` decodes the reply's numbers with a fraction or exponent exactly
        as they were written (``1.00`` stays ``Decimal("1.00")``) instead of as floats.
        """
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            request["params"] = params
        parsed = parse(json.dumps(request))
        item = parsed.items[0]
        if not isinstance(item, Call):
            return _raise(item["error"])
        ctxt = {"request_id": request_id, "source": dict(source or DEFAULT_SOURCE)}
        answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        incoming = _Incoming(ctxt, oslo_message(item), answer=answer)
        self._start(incoming, lambda: self._dispatcher.dispatch(incoming))
        try:
            result = answer.result()  # the method's outcome, or -32001 at its time limit
        except Exception as exc:
            code, message, data = error_from_exception(exc, debug=True)
            if code == METHOD_NOT_FOUND:
                message = f"Method not found: {method}"
            raise RpcError(code, message, data) from exc
        response = json.loads(dumps(result_response(request_id, result),
                                             self.conf.server.decimal_as), parse_float=parse_float)
        if "error" in response:
            return _raise(response["error"])
        return response["result"]


def queued_jobs(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The jobs waiting in a spool directory, in run order: ``{"id", "task", "kwargs", "attempts", ...}``.

    With ``config={"spooler": {"directory": d}}``, a method's ``.spool(...)`` calls land there and
    nothing runs them: a test checks what was queued, then calls the ``@spool`` function itself.
    """
    folder = os.path.join(os.fspath(directory), "queue")
    found = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            found.append(json.load(fh))
    return found


def _raise(error: dict[str, Any]) -> Any:
    raise RpcError(error.get("code"), error.get("message"), error.get("data"))


def call(endpoints: Any, method: str, params: list[Any] | dict[str, Any] | None = None,
         **options: Any) -> Any:
    """Load ``endpoints`` (a folder, a module name, endpoint objects, or a list of them) and call
    ``method`` once as sbusr-server would: the decoded JSON result, or RpcError with its code.

    ``options``: ``config={"execution": {"call_timeout": 5}}`` and :meth:`Methods.call`'s
    ``source``/``request_id``.
    """
    config = options.pop("config", None)
    return Methods(endpoints, config).call(method, params, **options)
