"""sbusr-server's two services: the same start, reload, stats and stop in either execution mode.

Thread mode: one process, the RPCServer and its threads (:class:`ThreadService`). Process mode: this
process is the master that owns the SmartBus link and relays to pre-started worker processes, each a
complete RPCServer (:class:`ProcessService`, :mod:`sbusr.execution.master.relay`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import oslo_messaging
from oslo_config import cfg

from sbusr import config, dispatch, metrics, opts
from sbusr.endpoints import system
from sbusr.execution import hooks, threads
from sbusr.execution.forkserver import ForkServer
from sbusr.jsonrpc.errors import SERVER_ERROR, RpcError
from sbusr.server.background import Background
from sbusr.smartbus import codec
from sbusr.transport.url import client_config_from_url
from sbusr.util import ready

LOG = logging.getLogger("sbusr.server")
#: sys.stats must fit one NOTIFY with its JSON-RPC envelope and sys.* fields around it
STATS_MAX_BYTES = codec.MAX_NOTIFY_PARAM - 1024

#: Seconds process mode waits for its first workers before registering on the bus anyway.
FIRST_WORKERS_WAIT = 120.0


def server_stats(address: str, mode: str, executor: dict[str, Any],
                 recorder: metrics.RequestMetrics) -> dict[str, Any]:
    """``sys.stats``: what the status page shows about this server, cut to fit one NOTIFY."""
    stats = {"server": address, "pid": os.getpid(), "mode": mode, "executor": executor, **recorder.snapshot()}
    return metrics.fit(stats, STATS_MAX_BYTES)


def reload_config(reloader: config.Reloader | None) -> dict[str, Any]:
    """Re-read the config files (refused as a whole, in one ERROR line, when a value is bad)."""
    if reloader is None:
        return {}
    try:
        return reloader.reload()
    except config.ConfigError as exc:
        error = f"reload refused, nothing changed: {exc}"
    LOG.error("%s", error)  # outside the except block: oslo.log would append the exception again
    raise RpcError(SERVER_ERROR, error)


class ThreadService:
    """An RPCServer plus the endpoint registry it serves, reloadable while running."""

    def __init__(self, conf: cfg.ConfigOpts, reload_entry: Any = None,
                 config_reloader: config.Reloader | None = None) -> None:
        self.conf = conf
        self.config_reloader = config_reloader
        url = oslo_messaging.TransportURL.parse(conf, opts.transport_url(conf))
        identity = client_config_from_url(conf, url)
        self.transport = oslo_messaging.get_rpc_transport(conf, url=url)
        self._reload_lock = threading.Lock()
        # timers, spooler, reload on save
        self.background = Background(conf, identity, reload_entry or self.reload)
        # Enough oslo executor threads to keep every worker busy and still run sys.* calls.
        conf.set_override("executor_thread_pool_size", threads.executor_pool_size(conf))
        group = conf.execution
        self.executor = threads.ThreadExecutor(group.workers, group.call_timeout, group.worker_init)
        self.registry = dispatch.load_endpoints(conf)
        self.executor.bind(self.registry)
        system.bind_registry(self.registry)
        system.set_reload_handler(self.reload)
        system.set_report("stats", self.stats)
        self.metrics = metrics.requests()
        self.metrics.set_methods(self.registry.methods())
        self.metrics.sample_executor(self.executor.stats)
        self._metrics_listener: metrics.MetricsListener | None = None
        address = f"{identity.unit_id}:{identity.client_id}"
        target = oslo_messaging.Target(topic=conf.server.topic, server=address)
        # the threading executor is oslo.messaging's default (and soon its only one)
        self.server = dispatch.rpc_server(self.transport, target, self.registry.adapters)
        self.address = address
        self._lifecycle = Lifecycle()

    def start(self) -> None:
        """worker_init (hooks.BootFailed if it raises), then listen and register without waiting
        for the bus; does nothing more once stop() began."""
        self.executor.start()  # worker_init, once, in this process
        with self._lifecycle.step() as go:
            if not go:
                return
            self._metrics_listener = metrics.serve(self.conf.metrics.host, self.conf.metrics.port)
            self.server.start()  # registers in the background: the bus may be unreachable for now
            self._lifecycle.listening = True
            self.background.start(self.registry)
            LOG.info("sbusr-server %s serving %d methods: %s", self.address, len(self.registry.methods()),
                     ", ".join(self.registry.methods()))
            ready.mark("serving", address=self.address, methods=len(self.registry.methods()))

    def reload(self) -> dict[str, Any]:
        """Re-import endpoint code; calls already running finish on the old code."""
        with self._reload_lock:
            changes = reload_config(self.config_reloader)
            try:
                self.executor.reconfigure(self.conf)
            except hooks.BootFailed as exc:
                raise reload_failed(exc) from None
            registry = dispatch.reload(self.conf)
            workers = self.executor.reload()
            self.executor.bind(registry)
            self.server.dispatcher.replace_endpoints(registry.adapters)
            self.registry = registry
            system.bind_registry(registry)
            self.background.reloaded(registry)
            self.metrics.set_methods(registry.methods())
            self.metrics.reload_done()
        methods = registry.methods()
        LOG.info("reloaded endpoints: %d methods", len(methods))
        return {"methods": methods, "duplicates": [d.as_row() for d in registry.duplicates],
                "workers": workers, "config": changes}

    def stats(self) -> dict[str, Any]:
        """``sys.stats``: what the status page shows about this server."""
        return server_stats(self.address, "thread", self.executor.stats(), self.metrics)

    def stop(self, timeout: float, reason: str | None = None) -> bool:
        """Stop taking requests, let in-flight calls finish (bounded), disconnect."""
        self._lifecycle.stop(reason)  # waits for a start step in progress: nothing starts after this
        self.background.halt()
        finished = True
        if self._lifecycle.listening:
            self.server.stop()
            waiter = threading.Thread(target=self.server.wait, daemon=True)
            waiter.start()
            waiter.join(timeout)
            finished = not waiter.is_alive()
            if not finished:
                LOG.warning("calls still running after %.1f s; exiting anyway", timeout)
        self.executor.shutdown()
        self.transport.cleanup()  # until the link closes, late requests get "shutting down"
        self.background.stop(timeout)  # its hold on the link goes first: the link closes now
        if self._metrics_listener is not None:
            self._metrics_listener.stop()
        return finished


class ProcessService:
    """Process mode: the master; workers run the RPCServer."""

    def __init__(self, conf: cfg.ConfigOpts, argv: Sequence[str], reload_entry: Any = None,
                 config_reloader: config.Reloader | None = None, forks: ForkServer | None = None) -> None:
        from sbusr.execution.master.relay import Master
        from sbusr.execution.recording import RecordingEvents

        self.conf = conf
        self.config_reloader = config_reloader
        url = oslo_messaging.TransportURL.parse(conf, opts.transport_url(conf))
        identity = client_config_from_url(conf, url)
        self.address = f"{identity.unit_id}:{identity.client_id}"
        # before the workers start: they inherit the environment it sets
        self.background = Background(conf, identity, reload_entry or self.reload)
        self.metrics = metrics.requests()
        self.master = Master(conf, opts.transport_url(conf), argv, RecordingEvents(self.metrics), forks)
        self.master.replies.metrics = self.metrics  # what the master answers itself is counted there
        self.metrics.sample_executor(self.master.stats)
        self._metrics_listener: metrics.MetricsListener | None = None
        system.set_reload_handler(self.reload)  # the master answers sys.reload: timers reload too
        self.background.worker_sinks = self.master.worker_sinks  # timers with target="workers"
        system.set_report("stats", self.stats)  # the master answers sys.stats
        self._lifecycle = Lifecycle()
        self._reload_lock = threading.Lock()

    def start(self) -> None:
        """Start every worker first, then register: the first calls pay no start-up cost.
        hooks.BootFailed when the workers cannot boot; does nothing more once stop() began."""
        with self._lifecycle.step() as go:
            if not go:
                return
            self._metrics_listener = metrics.serve(self.conf.metrics.host, self.conf.metrics.port)
            self.master.start()
        if not self.master.wait_ready(FIRST_WORKERS_WAIT) and not self._lifecycle.stopping:
            LOG.error("no worker ready after %g s; registering anyway (calls get 'starting')",
                      FIRST_WORKERS_WAIT)
        if self._lifecycle.stopping:
            return
        timers = self._timer_registry()  # slow (imports the endpoint code): outside the step
        with self._lifecycle.step() as go:
            if not go:
                return
            methods = self.master.methods
            self.metrics.set_methods(methods)
            LOG.info("sbusr-server %s serving %d methods in %d worker processes: %s", self.address,
                     len(methods), self.conf.execution.workers, ", ".join(methods))
            self.master.connect()  # registers in the background: the bus may be unreachable for now
            self.background.start(timers)
            ready.mark("serving", address=self.address, methods=len(methods))

    def _timer_registry(self) -> dispatch.Registry:
        """Timers are found in the endpoint modules: the master loads them for that alone (it never
        calls them; ticks go to the workers like any request)."""
        return dispatch.load_endpoints(self.conf, fresh=True)

    def reload(self) -> dict[str, Any]:
        with self._reload_lock:
            changes = reload_config(self.config_reloader)
            self.master.reconfigure(self.conf)  # new workers read the files themselves
            try:
                summary = dict(self.master.reload(), config=changes)
            except hooks.BootFailed as exc:
                raise reload_failed(exc) from None
            self.background.reloaded(self._timer_registry())
            self.metrics.set_methods(summary.get("methods", []))
            self.metrics.reload_done()
        LOG.info("reloaded endpoints: %d methods", len(summary.get("methods", [])))
        return summary

    def stop(self, timeout: float, reason: str | None = None) -> bool:
        self._lifecycle.stop(reason)  # waits for a start step in progress: nothing starts after this
        self.background.halt()
        # once every call is answered, the master and the timers let go of the link: it closes
        finished = self.master.stop(timeout, answered=self.background.release_bus)
        self.background.stop(timeout)
        if self._metrics_listener is not None:
            self._metrics_listener.stop()
        return finished

    def stats(self) -> dict[str, Any]:
        """``sys.stats``: the master's counts."""
        return server_stats(self.address, "process", self.master.stats(), self.metrics)


class Lifecycle:
    """Start and stop of a service, which run in different threads (a signal may come at any
    moment of the start-up): each start step runs whole or not at all, and none after stop()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stopping = False
        #: the RPCServer was started (thread mode): stopping it has something to wait for
        self.listening = False

    @contextlib.contextmanager
    def step(self) -> Iterator[bool]:
        """``with lifecycle.step() as go:`` -- run the step only if ``go`` (not stopping)."""
        with self._lock:
            yield not self.stopping

    def stop(self, reason: str | None = None) -> None:
        """From now on no start step runs; ``reason`` is logged after any step's own lines."""
        with self._lock:
            self.stopping = True
            if reason:
                LOG.info("%s", reason)


def reload_failed(exc: hooks.BootFailed) -> RpcError:
    """The reload's answer when its new workers cannot boot (one ERROR line; nothing changed)."""
    error = f"reload failed, the previous code keeps serving: {exc.cause}"
    LOG.error("%s", error)
    return RpcError(SERVER_ERROR, error)
