"""``sbusr-api``: the HTTP flow-launch and control API, in its own process with its own SmartBus identity."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence

import oslo_messaging
from oslo_config import cfg
from tornado.httpserver import HTTPServer

from sbusr import config
from sbusr.api import app as api_app
from sbusr.api.bus import BusApi, make_transport
from sbusr.cmd import common
from sbusr.util import ready

LOG = logging.getLogger("sbusr.api")


DESCRIPTION = ("HTTP API of sbusr: start IPSC flows over SmartBus (POST /api/flow), list the IPSCs on "
               "the bus, make sbusr-server reload (/sys/reset), health check. SIGHUP re-reads the "
               "configuration; SIGTERM stops gracefully.")


def main(argv: Sequence[str] | None = None) -> int:
    conf = common.prepare(argv if argv is not None else sys.argv[1:], "sbusr-api", description=DESCRIPTION)
    ready.setup("sbusr-api", {"listening", "bus"})
    if conf.smartbus.embedded_bus:
        # the bus must outlive the API; only sbusr-server (or sbusr-bus) may host the development bus
        LOG.info("[smartbus] embedded_bus is ignored by sbusr-api; it connects to the bus already running")
        conf.set_override("embedded_bus", False, group="smartbus")
    try:
        transport = make_transport(conf)
    except (ValueError, oslo_messaging.InvalidTransportURL) as exc:
        error = str(exc)
    else:
        reloader = config.Reloader(conf, "sbusr-api")
        return common.finish(conf, asyncio.run(serve(conf, transport, reloader)))
    print(f"sbusr-api: configuration error: {error}", file=sys.stderr)
    return 2


async def serve(conf: cfg.ConfigOpts, transport: oslo_messaging.Transport,
                reloader: config.Reloader | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then stop accepting, let in-flight calls end briefly, clean up."""
    bus_api = BusApi(conf, transport)
    app = api_app.make_app(bus_api)
    loop = asyncio.get_running_loop()
    server = HTTPServer(app, **api_app.server_options(conf))
    try:  # first: /health answers (503) while the bus is unreachable, and a taken port fails at once
        server.listen(conf.api.listen_port, conf.api.listen_host)
    except OSError as exc:
        LOG.error("cannot listen on %s:%s: %s", conf.api.listen_host, conf.api.listen_port,
                  exc.strerror or exc)
        bus_api.close()
        transport.cleanup()
        return 1
    # the connection is lazy: open it now, in a thread of its own (a stop does not wait for it)
    threading.Thread(target=_connect, args=(bus_api,), name="sbusr-api-connect", daemon=True).start()
    LOG.info("sbusr-api listening on http://%s:%s (auth %s); /sys/reset reloads sbusr-server %s",
             conf.api.listen_host, conf.api.listen_port, "on" if conf.api.auth_token else "off",
             bus_api.server)
    ready.mark("listening", url=f"http://{conf.api.listen_host}:{conf.api.listen_port}")
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        LOG.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, _reload_config, reloader))
    await stop.wait()
    server.stop()
    deadline = time.monotonic() + conf.server.graceful_timeout
    while bus_api.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if bus_api.in_flight:
        LOG.warning("%d bus call(s) still running; exiting anyway", bus_api.in_flight)
    else:
        await asyncio.sleep(0.2)  # let the answers to the last calls reach their sockets
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=2.0)
    except TimeoutError:
        LOG.warning("some HTTP connections did not close in time")
    bus_api.close()
    transport.cleanup()
    LOG.info("stopped")
    return 0


def _connect(bus_api: BusApi) -> None:
    """Register on the bus (waiting up to connect_timeout, then retrying in the background)."""
    try:
        status = bus_api.connect()
        LOG.info("SmartBus identity %s, connected: %s", status.get("address"), status.get("connected"))
        ready.mark("bus", address=status.get("address"), connected=bool(status.get("connected")))
    except Exception as exc:  # keep serving: /health reports the state and the client keeps reconnecting
        LOG.warning("SmartBus status unavailable at start-up: %s", exc)
        ready.mark("bus", connected=False)


def _reload_config(reloader: config.Reloader) -> None:
    """SIGHUP: apply the mutable options (e.g. [api] auth_token, debug); the log lists the changes."""
    try:
        reloader.reload()
    except config.ConfigError as exc:
        error = str(exc)
    else:
        return
    LOG.error("configuration not reloaded, nothing changed: %s", error)


if __name__ == "__main__":
    sys.exit(main())
