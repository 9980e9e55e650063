"""sbusr-server as a test process (:mod:`sbusr.testing.processes`), plus what the execution tests
need: a hot standby's start, the worker processes."""

from __future__ import annotations

from pathlib import Path

import psutil

from sbusr.execution import forkserver
from sbusr.testing import processes
from sbusr.testing.processes import SERVER_CLIENT, SERVER_UNIT, write_config
from sbusr.util import procs

__all__ = ["SERVER_CLIENT", "SERVER_UNIT", "ServerProcess", "workers_of", "write_config"]


def workers_of(server: int) -> list[int]:
    """The live worker processes of a process-mode server: the children of its fork server, and
    any child started as a fresh interpreter (the fork server itself runs no calls)."""
    found: list[int] = []
    for pid in procs.children(server):
        try:
            forks = psutil.Process(pid).name() == forkserver.NAME
        except psutil.Error:
            continue
        found.extend(procs.children(pid) if forks else [pid])
    return sorted(found)


class ServerProcess(processes.ServerProcess):
    """With ``standby``, start() returns once it serves and the bus has refused its identity."""

    def __init__(self, config_file: Path, extra_args: tuple[str, ...] = (), standby: bool = False) -> None:
        super().__init__(config_file, extra_args)
        self.standby = standby

    def start(self) -> ServerProcess:
        self.launch()
        self.wait_for_event("standby" if self.standby else "ready")
        return self

    def workers(self) -> list[int]:
        """Pids of the server's live worker processes (process mode)."""
        assert self.proc is not None
        return workers_of(self.proc.pid)
