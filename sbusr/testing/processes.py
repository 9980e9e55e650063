"""Real processes for tests: the development bus and sbusr-server, on free ports, with temp config files.

Each runs as ``python -m ...`` of the installed sbusr, so tests see exactly what an operator runs.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sbusr.util.procs import die_with_parent, terminate

START_TIMEOUT = 60.0  # returns as soon as ready; generous for a busy machine
STOP_TIMEOUT = 10.0
SERVER_START_TIMEOUT = 120.0  # returns as soon as ready; a busy 2-core machine starts Python slowly
SERVER_UNIT = 19
SERVER_CLIENT = 1

def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the usual small race is accepted in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class BusProcess:
    """``sbusr-bus`` in a child process; output goes to a temp file (a pipe nobody reads could block it)."""

    host = "127.0.0.1"

    def __init__(self, port: int | None = None, unit_id: int = 0, extra_args: Sequence[str] = ()) -> None:
        self.port = port if port is not None else free_port(self.host)
        self.unit_id = unit_id
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._log = tempfile.TemporaryFile()

    def start(self) -> BusProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("bus process already running")
        cmd = [sys.executable, "-m", "sbusr.cmd.bus", "--host", self.host, "--port", str(self.port),
               "--unit-id", str(self.unit_id), *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.returncode = None
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=die_with_parent(os.getpid()))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise RuntimeError(f"bus exited with {self.returncode} during start:\n{self.output()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"bus did not listen on {self.host}:{self.port} within {START_TIMEOUT} s:\n"
                           f"{self.output()}")

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if it hangs.  ``returncode`` keeps the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self.returncode = terminate(proc, STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def output(self) -> str:
        """Everything the bus printed so far (stdout and stderr)."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")

    def __enter__(self) -> BusProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()  # the output file stays readable until this object is garbage-collected


def write_config(path: Path, bus_port: int, sections: dict[str, dict[str, Any]] | None = None,
                 unit: int = SERVER_UNIT, client: int = SERVER_CLIENT) -> Path:
    """A config file whose transport_url points at the test bus; ``sections`` add options.

    Unless ``sections`` say otherwise, the metrics listener takes a free port (the default port,
    9465, would be shared by every server of a parallel test run); rewriting a file keeps its port,
    so a reload sees no change there.
    """
    sections = {k: dict(v) for k, v in (sections or {}).items()}
    default = sections.setdefault("DEFAULT", {})
    default.setdefault("transport_url", f"smartbus://127.0.0.1:{bus_port}/?unit_id={unit}&client_id={client}")
    sections.setdefault("metrics", {}).setdefault("port", _metrics_port_of(path) or free_port())
    lines: list[str] = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        for name, value in options.items():
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            lines.append(f"{name} = {value}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _metrics_port_of(path: Path) -> int | None:
    """The ``[metrics] port`` an earlier :func:`write_config` wrote to ``path``."""
    try:
        text = path.read_text()
    except OSError:
        return None
    found = re.search(r"^\[metrics\]\n(?:(?!\[).*\n)*?port = (\d+)$", text, re.MULTILINE)
    return int(found.group(1)) if found else None


class ServerProcess:
    """``python -m sbusr.cmd.server --config-file <file>``; start() waits until it serves."""

    def __init__(self, config_file: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.config_file = config_file
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="sbusr-server-", suffix=".log", delete=False)

    def start(self) -> ServerProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sbusr.cmd.server", "--config-file", str(self.config_file),
             *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sbusr-server exited with {self.proc.returncode}:\n{self.output()}")
            out = self.output()
            if " serving " in out and "registered on SmartBus" in out:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sbusr-server did not start within {SERVER_START_TIMEOUT} s:\n{self.output()}")

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        return terminate(self.proc, timeout)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)
