"""``sbusr-server``: serve endpoint methods to IPSC flows through the standard oslo.messaging RPCServer."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import oslo_messaging
from oslo_config import cfg

from sbusr import config, dispatch, execution, jsonrpc, metrics, opts
from sbusr.background import Background
from sbusr.cmd import common
from sbusr.driver_smartbus import client_config_from_url
from sbusr.endpoints import system
from sbusr.smartbus import codec

LOG = logging.getLogger("sbusr.server")
#: sys.stats must fit one NOTIFY with its JSON-RPC envelope and sys.* fields around it
STATS_MAX_BYTES = codec.MAX_NOTIFY_PARAM - 1024


class Service:
    """An RPCServer plus the endpoint registry it serves, reloadable while running."""

    def __init__(self, conf: cfg.ConfigOpts, reload_entry: Any = None,
                 config_reloader: config.Reloader | None = None) -> None:
        self.conf = conf
        self.config_reloader = config_reloader
        url = oslo_messaging.TransportURL.parse(conf, opts.transport_url(conf))
        identity = client_config_from_url(conf, url)
        self.transport = oslo_messaging.get_rpc_transport(conf, url=url)
        self._reload_lock = threading.Lock()
        # timers, spooler, reload on save; before the workers start (they inherit its environment)
        self.background = Background(conf, identity, reload_entry or self.reload)
        # Enough oslo executor threads to keep every worker busy and still run sys.* calls.
        conf.set_override("executor_thread_pool_size", execution.executor_pool_size(conf))
        self.executor = execution.create_executor(conf)
        self.registry = dispatch.load_endpoints(conf)
        self.executor.bind(self.registry)
        system.bind_registry(self.registry)
        system.set_reload_handler(self.reload)
        system.set_report("stats", self.stats)
        self.metrics = metrics.requests()
        self.metrics.set_methods(self.registry.methods())
        self.metrics.sample_executor(getattr(self.executor, "stats", None))
        self._metrics_listener: metrics.MetricsListener | None = None
        address = f"{identity.unit_id}:{identity.client_id}"
        target = oslo_messaging.Target(topic=conf.server.topic, server=address)
        # the threading executor is oslo.messaging's default (and soon its only one)
        self.server = dispatch.rpc_server(self.transport, target, self.registry.adapters)
        self.address = address

    def start(self) -> None:
        self.executor.start()  # prestarted workers: the first calls pay no start-up latency
        self._metrics_listener = metrics.serve(self.conf.metrics.host, self.conf.metrics.port)
        self.server.start()
        self.background.start(self.registry)
        LOG.info("sbusr-server %s serving %d methods: %s", self.address, len(self.registry.methods()),
                 ", ".join(self.registry.methods()))

    def reload(self) -> dict[str, Any]:
        """Re-read the config files, then re-import endpoint code; running calls finish on the old code."""
        with self._reload_lock:
            changes = self._reload_config()
            self.executor.reconfigure(self.conf)
            registry = dispatch.reload(self.conf)
            workers = self.executor.reload()  # returns once fresh workers serve new calls
            self.executor.bind(registry)
            self.server.dispatcher.endpoints = registry.adapters
            self.registry = registry
            system.bind_registry(registry)
            self.background.reloaded(registry)
            self.metrics.set_methods(registry.methods())
            self.metrics.reload_done()
            if self.executor.mode == "process":  # a reload replaces every worker process
                self.metrics.worker_restarted("reload", self.executor.workers)
        methods = registry.methods()
        LOG.info("reloaded endpoints: %d methods", len(methods))
        return {"methods": methods, "duplicates": [list(d) for d in registry.duplicates], "workers": workers,
                "config": changes}

    def _reload_config(self) -> dict[str, Any]:
        if self.config_reloader is None:
            return {}
        try:
            return self.config_reloader.reload()
        except config.ConfigError as exc:
            error = f"reload refused, nothing changed: {exc}"
        LOG.error("%s", error)  # outside the except block: oslo.log would append the exception again
        raise jsonrpc.RpcError(jsonrpc.SERVER_ERROR, error)

    def stats(self) -> dict[str, Any]:
        """``sys.stats``: what the status page shows about this server."""
        executor = getattr(self.executor, "stats", None)
        stats = {"server": self.address, "mode": self.executor.mode,
                 "executor": executor() if executor else {}, **self.metrics.snapshot()}
        return metrics.fit(stats, STATS_MAX_BYTES)

    def stop(self, timeout: float) -> bool:
        """Stop taking requests, let in-flight calls finish (bounded), disconnect."""
        self.background.halt()
        self.server.stop()
        waiter = threading.Thread(target=self.server.wait, daemon=True)
        waiter.start()
        waiter.join(timeout)
        finished = not waiter.is_alive()
        if not finished:
            LOG.warning("calls still running after %.1f s; exiting anyway", timeout)
        self.executor.shutdown()  # calls still running are answered "server is shutting down"
        waiter.join(1.0)  # let those replies go out before the transport closes
        self.background.stop(timeout)
        self.transport.cleanup()
        if self._metrics_listener is not None:
            self._metrics_listener.stop()
        return finished


DESCRIPTION = ("Serve Python endpoint methods to Hesong IPSC flows: JSON-RPC 2.0 requests arrive over "
               "SmartBus, replies go back as NOTIFY messages. SIGHUP (or /sys/reset) re-reads the "
               "configuration and reloads the endpoints; SIGTERM stops gracefully.")


def main(argv: Sequence[str] | None = None) -> int:
    conf = common.prepare(argv if argv is not None else sys.argv[1:], "sbusr-server",
                          description=DESCRIPTION)
    service: Service | None = None

    def reload_entry() -> None:  # SIGHUP and reload on save run the same reload
        if service is not None:
            _safe_reload(service)

    service = Service(conf, reload_entry, config.Reloader(conf, "sbusr-server"))
    stop = threading.Event()

    def on_stop(signum: int, _frame: object) -> None:
        LOG.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(_signum: int, _frame: object) -> None:
        threading.Thread(target=reload_entry, name="reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    service.start()
    while not stop.wait(1.0):
        pass
    service.stop(conf.server.graceful_timeout)
    LOG.info("stopped")
    return common.finish(conf, 0)


def _safe_reload(service: Service) -> None:
    try:
        service.reload()
    except jsonrpc.RpcError:
        pass  # a refused configuration, already logged in one line
    except Exception:
        LOG.exception("reload failed; the previous endpoints stay in service")


if __name__ == "__main__":
    sys.exit(main())
