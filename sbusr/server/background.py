"""What sbusr-server runs beside its RPCServer for method writers: timers, the spooler, reload on save.

Everything here reaches the methods the way a caller does, so it works the same in every
execution mode: a timer tick is a JSON-RPC request the server sends to its own SmartBus address
(:meth:`sbusr.transport.connection.BusConnection.request_self`), spooled jobs run in separate spooler
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

from sbusr import opts
from sbusr.endpoints import system
from sbusr.endpoints.timer import ADDRESS_ENV
from sbusr.jsonrpc.encoding import dumps
from sbusr.jsonrpc.errors import INTERNAL_ERROR, RpcError
from sbusr.server.reload_on_save import ReloadOnSave
from sbusr.smartbus.interface import ClientConfig
from sbusr.spooler.jobs import DIRECTORY_ENV
from sbusr.spooler.supervisor import Spooler
from sbusr.timers import schedule
from sbusr.timers.scheduler import Scheduler
from sbusr.transport.connection import BusConnection

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
        self.scheduler = Scheduler(self._call_self, conf.execution.call_timeout, self._on_bus,
                                   self._call_each)
        #: process mode: one request sink per worker (``Master.worker_sinks``), for timers with
        #: ``target="workers"``; None in thread mode, where the server is the one process
        self.worker_sinks: Callable[[], list[Callable[[Any], None]]] | None = None
        self.spooler: Spooler | None = None
        if conf.spooler.directory:
            try:
                self.spooler = Spooler(conf.spooler.directory, conf.spooler.processes, config_args(conf),
                                       conf.spooler.max_retries)
            except OSError as exc:
                LOG.error("[spooler] directory %s cannot be used (%s); no spooler, .spool() fails",
                          conf.spooler.directory, exc)
        if self.spooler is not None:  # .spool() in this process and in every worker stores jobs there
            os.environ[DIRECTORY_ENV] = self.spooler.store.directory
        self._report_state()
        self._reload = reload
        self.watcher: ReloadOnSave | None = None
        self._halted = False
        self._conn: BusConnection | None = None

    def _report_state(self) -> None:
        """``sys.spool`` and ``sys.timers`` answer from the moment the server can be called, even
        before start(): a caller that sees the server join the bus gets figures, never an error."""
        if self.spooler is not None:
            system.set_report("spool", self.spooler.describe)
        else:
            system.set_report("spool", lambda: {"directory": None, "active": False, "queued": 0,
                                                "running": 0, "failed": 0})
        system.set_report("timers", self.scheduler.describe)

    def start(self, registry: Any) -> None:
        """Call once the RPCServer serves (a tick is a request to it)."""
        if self.spooler is not None:
            self.spooler.start()
        self._conn = BusConnection.acquire(self.conf, self.identity, connect=False)  # the server connects it
        self.scheduler.update(schedule.find_timers(registry.modules))
        self.scheduler.start()
        if self.conf.endpoints.watch:
            self.watcher = ReloadOnSave(self._watched_folders(), self._reload)
            self.watcher.start()

    def _watched_folders(self) -> list[str]:
        """``[endpoints]`` and ``[sql] directories`` as the loaders read them (config-relative)."""
        return [*(opts.config_relative(self.conf, folder, "directories", "endpoints")
                  for folder in self.conf.endpoints.directories),
                *(opts.config_relative(self.conf, folder, "directories", "sql")
                  for folder in self.conf.sql.directories)]

    def reloaded(self, registry: Any) -> None:
        """After a reload: timers of the new code, spooler processes with the new code, reload on
        save as the configuration now says (on or off, the folders it names)."""
        self.scheduler.update(schedule.find_timers(registry.modules))
        if self.spooler is not None:
            self.spooler.reload()
        self._follow_watch_option()

    def _follow_watch_option(self) -> None:
        watcher = self.watcher
        if self._halted:
            return
        if self.conf.endpoints.watch and watcher is None:
            LOG.info("[endpoints] watch turned on")
            self.watcher = ReloadOnSave(self._watched_folders(), self._reload)
            self.watcher.start()
        elif self.conf.endpoints.watch and watcher is not None:
            watcher.watch(self._watched_folders())
        elif watcher is not None:
            self.watcher = None
            watcher.stop()
            LOG.info("[endpoints] watch turned off: reload on save is off")

    def halt(self) -> None:
        """First step of a shutdown: no more ticks or reloads on save."""
        self._halted = True
        if self.watcher is not None:
            self.watcher.stop()
        self.scheduler.halt()
        if self.spooler is not None:
            self.spooler.halt()  # they finish their jobs while the RPC calls drain

    def release_bus(self) -> None:
        """Let go of the bus link (ticks still in flight answer locally); idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release()

    def stop(self, timeout: float) -> None:
        """Last step: let go of the bus link, then wait for the ticks in flight and let spooler
        processes finish their jobs (bounded)."""
        self.release_bus()
        self.scheduler.stop(timeout=min(timeout, 5.0))
        if self.spooler is not None:
            self.spooler.stop(timeout)

    def _on_bus(self) -> bool:
        return self._conn is not None and self._conn.connected

    def _call_self(self, method: str, params: dict[str, Any], timeout: float | None) -> Any:
        conn = self._conn
        if conn is None:
            raise RuntimeError("not started")
        request_id = f"sbusr-timer-{uuid.uuid4().hex}"
        body = dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return self._result(conn.request_self(body, request_id, timeout))

    def _call_each(self, method: str, params: dict[str, Any], timeout: float | None) -> list[Any]:
        """The call in every worker process at once (thread mode: the one call); per worker, its
        result or the exception that stands for its error."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("not started")
        if self.worker_sinks is None:
            return [self._call_self(method, params, timeout)]
        pending = []
        for sink in self.worker_sinks():
            request_id = f"sbusr-timer-{uuid.uuid4().hex}"
            body = dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            pending.append((request_id, conn.send_self(body, request_id, sink)))
        results: list[Any] = []
        for request_id, reply in pending:
            try:
                results.append(self._result(reply.result(timeout)))
            except Exception as exc:
                results.append(exc)
            finally:
                conn.forget_reply(request_id)
        return results

    @staticmethod
    def _result(raw: bytes) -> Any:
        reply = json.loads(raw)
        if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
            error = reply["error"]
            raise RpcError(error.get("code", INTERNAL_ERROR), str(error.get("message", "")),
                                   error.get("data"))
        return reply.get("result") if isinstance(reply, dict) else None
