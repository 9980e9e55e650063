"""Real processes for tests: the development bus and sbusr-server, on free ports, with temp config files.

Each runs as ``python -m ...`` of the installed sbusr, so tests see exactly what an operator runs.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sbusr.util import ready
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


class ReadyPipe:
    """The pipe a child announces its events on (``SBUSR_READY_FD``, :mod:`sbusr.util.ready`).

    ``env(...)`` and ``pass_fds`` go to ``subprocess.Popen``; :meth:`wait` then returns the event's
    JSON object as soon as the child writes it, and fails with the child's output when the child
    exits first or the bound passes.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self._buffer = b""
        #: every event the child wrote so far, in order
        self.events: list[dict[str, Any]] = []

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self._write,) if self._write >= 0 else ()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return dict(os.environ if base is None else base, **{ready.ENV: str(self._write)})

    def launched(self) -> None:
        """After Popen: only the child holds the write end, so its exit ends the pipe."""
        if self._write >= 0:
            os.close(self._write)
            self._write = -1

    def wait(self, proc: subprocess.Popen[bytes], event: str, timeout: float, what: str,
             output: Callable[[], str]) -> dict[str, Any]:
        self.launched()
        deadline = time.monotonic() + timeout
        while True:
            for seen in self.events:
                if seen.get("event") == event:
                    return seen
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{what} did not report {event!r} within {timeout:g} s:\n{output()}")
            readable, _, _ = select.select([self._read], [], [], remaining)
            if not readable:
                continue
            data = os.read(self._read, 65536)
            if not data:  # the child closed its end: it exited (or is exiting)
                try:
                    code: int | None = proc.wait(min(remaining, STOP_TIMEOUT))
                except subprocess.TimeoutExpired:
                    code = None
                raise RuntimeError(f"{what} exited with {code} before reporting {event!r}:\n{output()}")
            self._buffer += data
            *lines, self._buffer = self._buffer.split(b"\n")
            self.events.extend(json.loads(line) for line in lines if line.strip())

    def close(self) -> None:
        self.launched()
        if self._read >= 0:
            os.close(self._read)
            self._read = -1

    def __del__(self) -> None:
        self.close()


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
        self.returncode = None
        pipe = ReadyPipe()
        try:
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=pipe.env(dict(os.environ, PYTHONUNBUFFERED="1")),
                                         pass_fds=pipe.pass_fds, preexec_fn=die_with_parent(os.getpid()))
            pipe.wait(self.proc, "ready", START_TIMEOUT, "sbusr-bus", self.output)
        except BaseException:
            self.stop()
            raise
        finally:
            pipe.close()
        return self

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
        self._ready: ReadyPipe | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="sbusr-server-", suffix=".log", delete=False)

    def launch(self) -> ServerProcess:
        """Start the process and return at once; :meth:`wait_for_event` waits for what it reports."""
        self._ready = ReadyPipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sbusr.cmd.server", "--config-file", str(self.config_file),
             *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT,
            env=self._ready.env(dict(os.environ, PYTHONUNBUFFERED="1")), pass_fds=self._ready.pass_fds)
        self._ready.launched()
        return self

    def wait_for_event(self, event: str = "ready", timeout: float = SERVER_START_TIMEOUT) -> dict[str, Any]:
        """The event (``ready``: serving and registered; ``standby``: serving, identity taken) as
        the server reported it; RuntimeError/TimeoutError with its output when it never comes."""
        assert self.proc is not None and self._ready is not None
        try:
            return self._ready.wait(self.proc, event, timeout, "sbusr-server", self.output)
        except BaseException:
            self.stop()
            raise

    def start(self) -> ServerProcess:
        """Start and wait until it serves and is registered on the bus."""
        self.launch()
        self.wait_for_event("ready")
        return self

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
        if self._ready is not None:
            self._ready.close()
        Path(self._log.name).unlink(missing_ok=True)
