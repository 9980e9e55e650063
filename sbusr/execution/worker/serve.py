"""A process-mode worker: a complete standard oslo.messaging RPCServer whose smartbus link is the
master, not the bus.

Started by the master as a fresh interpreter (``python -m sbusr.cmd.worker --link-fd N ...`` with
the master's own command-line options, so it reads the same configuration files). Endpoint code,
``worker_init``, ``@limits``, the legacy adapter and the reply path are the thread-mode code; only
the client underneath the smartbus driver differs: the driver is built with a client factory that
makes the link (:mod:`sbusr.execution.worker.link`). The ``sys.*`` calls whose state lives in the
master (stats, timers, spool, reload) are answered there and never reach a worker. The worker

* takes ``[execution] threads`` request packets at a time (the master sends no more);
* reports each call's limit when it differs from the one the master assumed, and every packet's
  end with its reply;
* ignores SIGINT/SIGHUP (the master decides), finishes its calls and exits on SIGTERM or when the
  master says so, and exits at once when the master goes away (link closed or re-parented).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import oslo_messaging
import oslo_messaging.transport
from oslo_config import cfg

from sbusr import dispatch
from sbusr.dispatch.context import CallContext
from sbusr.driver_smartbus import SmartBusDriver
from sbusr.endpoints import system
from sbusr.execution import hooks, messages
from sbusr.execution.home import HomeThread
from sbusr.execution.limits import call_timeout
from sbusr.execution.threads import Executor
from sbusr.execution.worker import link
from sbusr.smartbus.interface import ClientConfig, ClientHandlers
from sbusr.transport.connection import ClientFactory
from sbusr.transport.url import client_config_from_url

LOG = logging.getLogger("sbusr.execution")

#: Seconds between checks that the master is still our parent (the link's EOF usually comes first).
PARENT_CHECK_INTERVAL = 0.5


class WorkerExecutor(Executor):
    """Invokers of a worker: no watchdog (the master enforces limits by killing the process); each
    call tells its packet's exchange its limit."""

    mode = "process"

    def __init__(self, call_timeout: float, home: HomeThread | None = None) -> None:
        super().__init__(1, call_timeout)
        self.home = home

    def system_invoker(self, adapter: dispatch.EndpointAdapter) -> dispatch.Invoker:
        def invoke(fn: Callable[..., Any], ctxt: Any, args: tuple, kwargs: dict) -> Any:
            _report(0.0)  # sys.* are never limited
            return fn(ctxt, *args, **kwargs)

        return invoke

    def invoker_for(self, adapter: dispatch.EndpointAdapter) -> dispatch.Invoker:
        default = self.default_timeout(adapter)
        home = self.home

        def invoke(fn: Callable[..., Any], ctxt: Any, args: tuple, kwargs: dict) -> Any:
            timeout = call_timeout(fn, default)
            _report(timeout)
            if isinstance(ctxt, CallContext):
                ctxt.set_timeout(timeout)
            if home is not None:
                return home.run(fn, ctxt, *args, **kwargs)
            return fn(ctxt, *args, **kwargs)

        return invoke


def _report(timeout: float) -> None:
    message = dispatch.current_call()
    if message is not None:
        message.exchange.call_started(message.request_id, message.full_method, timeout)


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(link.ORPHAN_EXIT)
        threading.Event().wait(PARENT_CHECK_INTERVAL)


def _boot(conf: cfg.ConfigOpts, transport_url: str,
          make_link: ClientFactory) -> tuple[Any, dispatch.Registry]:
    """worker_init, the endpoints, the RPCServer on the link: everything before Ready."""
    # one call at a time: worker_init, the endpoint classes and every method share one thread
    threads = conf.execution.threads
    home = HomeThread() if threads == 1 and conf.execution.worker_init else None

    def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return home.run(fn, *args, **kwargs) if home is not None else fn(*args, **kwargs)

    run(hooks.require_hook, conf.execution.worker_init)
    # the master loads the same code and reports it once
    registry = run(dispatch.load_endpoints, conf, duplicates_level=logging.DEBUG, report=False)
    WorkerExecutor(conf.execution.call_timeout, home).bind(registry)
    system.bind_registry(registry)

    url = oslo_messaging.TransportURL.parse(conf, transport_url)
    driver = SmartBusDriver(conf, url, client_factory=make_link)
    transport = oslo_messaging.transport.RPCTransport(driver)
    identity = client_config_from_url(conf, url)
    target = oslo_messaging.Target(topic=conf.server.topic, server=f"{identity.unit_id}:{identity.client_id}")
    server = dispatch.rpc_server(transport, target, registry.adapters)
    server.start()  # the driver's connection is the link: its client exists from here on
    return server, registry


def _boot_failed(sock: socket.socket, exc: hooks.BootFailed) -> NoReturn:
    """Tell the master why this worker cannot serve (it logs it) and exit."""
    try:
        sock.sendall(messages.encode(messages.Failed(os.getpid(), exc.cause, exc.detail)))
    except OSError:
        pass
    logging.shutdown()
    os._exit(hooks.BOOT_FAILED_EXIT)


def serve(conf: cfg.ConfigOpts, link_fd: int, transport_url: str) -> int:
    """Run the worker until told to exit; the exit status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    leaving = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: leaving.set())
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()

    sock = socket.socket(fileno=link_fd)
    sock.setblocking(True)
    links: list[link.LinkClient] = []

    def make_link(config: ClientConfig, handlers: ClientHandlers) -> link.LinkClient:
        client = link.LinkClient(sock, config, handlers, notify_ttl=conf.smartbus.notify_ttl,
                                 default_timeout=conf.execution.call_timeout, on_exit=leaving.set)
        links.append(client)
        return client

    conf.set_override("embedded_bus", False, group="smartbus")  # the master owns the bus side
    threads = conf.execution.threads
    conf.set_override("executor_thread_pool_size", threads)

    try:
        server, registry = _boot(conf, transport_url, make_link)
    except hooks.BootFailed as exc:
        _boot_failed(sock, exc)
    except Exception as exc:  # a crash while loading: the master names it when it gives up
        _boot_failed(sock, hooks.BootFailed(f"worker start-up raised {hooks.describe(exc)}",
                                            traceback.format_exc()))
    links[0].send(messages.Ready(os.getpid(), None, registry.methods(),
                                 [d.as_row() for d in registry.duplicates]))
    LOG.debug("worker pid %d serving %d methods", os.getpid(), len(registry.methods()))
    leaving.wait()
    server.stop()
    server.wait()  # the calls this worker holds finish and are answered
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # no interpreter teardown: nothing is left to flush, and it can only delay the exit
