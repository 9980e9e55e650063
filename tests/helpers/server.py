"""sbusr-server as a test process (the base moved to :mod:`sbusr.testing.processes`), plus what the
execution tests need: start without waiting, a hot standby's start, the worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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

    def launch(self) -> ServerProcess:
        """Start the process and return at once."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sbusr.cmd.server", "--config-file", str(self.config_file),
             *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        return self

    def start(self) -> ServerProcess:
        if not self.standby:
            super().start()
            return self
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + processes.SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sbusr-server exited with {self.proc.returncode}:\n{self.output()}")
            out = self.output()
            if " serving " in out and "standing by" in out:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"standby sbusr-server did not start:\n{self.output()}")

    def children(self) -> list[int]:
        """Pids of the server's live child processes (process mode: its workers)."""
        assert self.proc is not None
        return children_of(self.proc.pid)
