"""sbusr-server as a test process (:mod:`sbusr.testing.processes`), plus what the execution tests
need: a hot standby's start, the worker processes."""

from __future__ import annotations

from pathlib import Path

from sbusr.testing import processes
from sbusr.testing.processes import SERVER_CLIENT, SERVER_UNIT, write_config
from sbusr.util import procs

__all__ = ["SERVER_CLIENT", "SERVER_UNIT", "ServerProcess", "children_of", "write_config"]


def children_of(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` and that are not zombies."""
    return sorted(procs.children(parent))


class ServerProcess(processes.ServerProcess):
    """With ``standby``, start() returns once it serves and the bus has refused its identity."""

    def __init__(self, config_file: Path, extra_args: tuple[str, ...] = (), standby: bool = False) -> None:
        super().__init__(config_file, extra_args)
        self.standby = standby

    def start(self) -> ServerProcess:
        self.launch()
        self.wait_for_event("standby" if self.standby else "ready")
        return self

    def children(self) -> list[int]:
        """Pids of the server's live child processes (process mode: its workers)."""
        assert self.proc is not None
        return children_of(self.proc.pid)
