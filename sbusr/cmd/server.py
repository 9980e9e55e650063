"""``sbusr-server``: serve endpoint methods to IPSC flows through the standard oslo.messaging RPCServer
(:mod:`sbusr.server.services`); this module is the program: signals, start-up outcome, exit status."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

import oslo_messaging

from sbusr import config
from sbusr.cmd import common, worker
from sbusr.execution import forkserver, hooks
from sbusr.jsonrpc.errors import RpcError
from sbusr.server.services import ProcessService, ThreadService
from sbusr.util import ready

LOG = logging.getLogger("sbusr.server")
#: Seconds past graceful_timeout after which a stopping server leaves no matter what.
EXIT_MARGIN = 1.5


def _hard_exit(code: int) -> None:
    LOG.error("still not stopped %.1f s after the graceful timeout; exiting now", EXIT_MARGIN)
    logging.shutdown()
    os._exit(code)


DESCRIPTION = ("Serve Python endpoint methods to Hesong IPSC flows: JSON-RPC 2.0 requests arrive over "
               "SmartBus, replies go back as NOTIFY messages. SIGHUP (or /sys/reset) re-reads the "
               "configuration and reloads the endpoints; SIGTERM stops gracefully.")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    stop = threading.Event()
    signals: list[str] = []

    def on_stop(signum: int, _frame: object) -> None:
        signals.append(signal.Signals(signum).name)  # logged by the stop, after any start-up line
        stop.set()

    # first: a SIGTERM in any state, even while starting, ends the process in bounded time
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    conf = common.prepare(args, "sbusr-server", description=DESCRIPTION)
    ready.setup("sbusr-server", {"serving", "registered"})  # before any worker or spooler process starts
    # while this process has one thread: the copy that forks the workers (it never returns here)
    forks = forkserver.start(worker.main) if conf.execution.mode == "process" else None
    service: ThreadService | ProcessService | None = None

    def reload_entry() -> None:  # SIGHUP and reload on save run the same reload
        if service is not None:
            _safe_reload(service)

    try:
        reloader = config.Reloader(conf, "sbusr-server")
        service = (ProcessService(conf, args, reload_entry, reloader, forks)
                   if conf.execution.mode == "process" else ThreadService(conf, reload_entry, reloader))
    except oslo_messaging.InvalidTransportURL as exc:
        LOG.error("bad transport_url: %s", exc)
        return 2

    def on_hup(_signum: int, _frame: object) -> None:
        threading.Thread(target=reload_entry, name="reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
    outcome: list[int] = []  # the exit status a failed start-up sets
    starter = threading.Thread(target=_safe_start, args=(service, stop, outcome), name="start", daemon=True)
    starter.start()
    while not stop.wait(1.0):
        pass
    graceful = conf.server.graceful_timeout
    guard = threading.Timer(graceful + EXIT_MARGIN, _hard_exit, args=(1,))
    guard.daemon = True
    guard.start()
    service.stop(graceful, f"signal {signals[0]}: stopping" if signals else None)
    if forks is not None:
        forks.close()
    guard.cancel()
    LOG.info("stopped")
    return common.finish(conf, outcome[0] if outcome else 0)


def _safe_start(service: ThreadService | ProcessService, stop: threading.Event, outcome: list[int]) -> None:
    failed: hooks.BootFailed | None = None
    try:
        service.start()
    except hooks.BootFailed as exc:
        failed = exc
    except Exception:
        LOG.exception("start-up failed")
        outcome.append(1)
        stop.set()
    if failed is not None:  # logged outside the except block: oslo.log would append the exception
        if failed.detail:
            LOG.debug("%s", failed.detail)
        LOG.critical("Worker failed to boot: %s; exiting with status %d", failed.cause,
                     hooks.BOOT_FAILED_EXIT)
        outcome.append(hooks.BOOT_FAILED_EXIT)
        stop.set()


def _safe_reload(service: ThreadService | ProcessService) -> None:
    try:
        service.reload()
    except RpcError:
        pass  # a refused configuration, already logged in one line
    except Exception:
        LOG.exception("reload failed; the previous endpoints stay in service")


if __name__ == "__main__":
    sys.exit(main())
