"""What sbusr-server runs beside its RPCServer for method writers: timers, the spooler, reload on save.

Everything here reaches the methods the way a caller does, so it works the same in every
execution mode: a timer tick is a JSON-RPC request the server sends to its own SmartBus address
(:meth:`sbusr.connection.BusConnection.request_self`), spooled jobs run in separate spooler
processes that load the endpoint code themselves, and reload on save calls the server's reload.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from sbusr import jsonrpc, opts, schedule
from sbusr.connection import BusConnection
from sbusr.endpoints import system
from sbusr.endpoints.timers import ADDRESS_ENV
from sbusr.reload_on_save import ReloadOnSave
from sbusr.scheduler import Scheduler
from sbusr.smartbus.interface import ClientConfig
from sbusr.spooler.jobs import DIRECTORY_ENV
from sbusr.spooler.supervisor import Spooler

LOG = logging.getLogger(__name__)


def config_args(conf: cfg.ConfigOpts) -> list[str]:
    """The command-line options that make another process read the same configuration."""
    args: list[str] = []
    for path in conf.config_file or []:
        args += ["--config-file", os.path.abspath(path)]
    folders = conf.config_dir or []
    for path in [folders] if isinstance(folders, str) else folders:
        args += ["--config-dir", os.path.abspath(path)]
    if getattr(conf, "debug", False):
        args.append("--debug")
    return args


class Background:
    """Created before the server's workers start (they inherit the environment it sets)."""

    def __init__(self, conf: cfg.ConfigOpts, identity: ClientConfig, reload: Callable[[], Any]) -> None:
        self.conf = conf
        self.identity = identity
        os.environ[ADDRESS_ENV] = f"{identity.unit_id}:{identity.client_id}"  # sbusr.timer.run checks it
        self.scheduler = Scheduler(self._call_self, conf.execution.call_timeout, self._on_bus)
        self.spooler: Spooler | None = None
        if conf.spooler.directory:
            try:
                self.spooler = Spooler(conf.spooler.directory, conf.spooler.processes, config_args(conf))
            except OSError as exc:
                LOG.error("[spooler] directory %s cannot be used (%s); no spooler, .spool() fails",
                          conf.spooler.directory, exc)
        if self.spooler is not None:  # .spool() in this process and in every worker stores jobs there
            os.environ[DIRECTORY_ENV] = self.spooler.store.directory
        sql_folders = [opts.config_relative(conf, f, "directories", "sql") for f in conf.sql.directories]
        self.watcher = (ReloadOnSave([*conf.endpoints.directories, *sql_folders], reload)
                        if conf.endpoints.watch else None)
        self._conn: BusConnection | None = None

    def start(self, registry: Any) -> None:
        """Call once the RPCServer serves (a tick is a request to it)."""
        if self.spooler is not None:
            self.spooler.start()
            system.set_report("spool", self.spooler.describe)
        else:
            system.set_report("spool", lambda: {"directory": None, "active": False, "queued": 0,
                                                "running": 0, "failed": 0})
        self._conn = BusConnection.acquire(self.conf, self.identity)
        self.scheduler.update(schedule.find_timers(registry.modules))
        self.scheduler.start()
        system.set_report("timers", self.scheduler.describe)
        if self.watcher is not None:
            self.watcher.start()

    def reloaded(self, registry: Any) -> None:
        """After a reload: timers of the new code, spooler processes with the new code."""
        self.scheduler.update(schedule.find_timers(registry.modules))
        if self.spooler is not None:
            self.spooler.reload()

    def halt(self) -> None:
        """First step of a shutdown: no more ticks or reloads on save."""
        if self.watcher is not None:
            self.watcher.stop()
        self.scheduler.halt()
        if self.spooler is not None:
            self.spooler.halt()  # they finish their jobs while the RPC calls drain

    def stop(self, timeout: float) -> None:
        """Last step: wait for ticks in flight, let spooler processes finish their jobs (bounded)."""
        self.scheduler.stop(timeout=min(timeout, 5.0))
        if self.spooler is not None:
            self.spooler.stop(timeout)
        if self._conn is not None:
            self._conn.release()
            self._conn = None

    def _on_bus(self) -> bool:
        return self._conn is not None and self._conn.connected

    def _call_self(self, method: str, params: dict[str, Any], timeout: float | None) -> Any:
        conn = self._conn
        if conn is None:
            raise RuntimeError("not started")
        request_id = f"sbusr-timer-{uuid.uuid4().hex}"
        body = jsonrpc.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        reply = json.loads(conn.request_self(body, request_id, timeout))
        if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
            error = reply["error"]
            raise jsonrpc.RpcError(error.get("code", jsonrpc.INTERNAL_ERROR), str(error.get("message", "")),
                                   error.get("data"))
        return reply.get("result") if isinstance(reply, dict) else None
