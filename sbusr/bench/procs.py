"""Child processes of ``sbusr-bench``: bus, server, echo client and load generators.

Every child gets its own session (a Ctrl-C reaches only the runner, which then stops
them in order) and, on Linux, a parent-death signal, so a runner killed outright leaves
no orphans.  Output goes to temp files: a pipe nobody reads could stall a child.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from sbusr.util.procs import die_with_parent, stop_group, terminate

HOST = "127.0.0.1"
SERVER_UNIT, SERVER_CLIENT = 19, 1
ECHO_UNIT, ECHO_CLIENT = 20, 1
BUS_UNIT = 0
STOP_TIMEOUT = 10.0

class Child:
    """One child process with its log in a temp file."""

    def __init__(self, name: str, argv: list[str], stdin: int | None = None,
                 stdout: int | IO[bytes] | None = None, wrapped: bool = False) -> None:
        self.name = name
        self.wrapped = wrapped  # argv starts with a wrapper (a profiler) that runs the real process
        self.log = tempfile.NamedTemporaryFile(prefix=f"sbusr-bench-{name}-", suffix=".log", delete=False)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout if stdout is not None else self.log,
                                     stderr=self.log, env=env, start_new_session=True,
                                     preexec_fn=die_with_parent(os.getpid()))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def begin_stop(self) -> None:
        """Ask the child to stop without waiting (a wrapper is stopped group-wise in :meth:`stop`)."""
        if not self.wrapped and self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        proc = self.proc
        if self.wrapped:
            stop_group(proc, STOP_TIMEOUT)
        terminate(proc, STOP_TIMEOUT)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def _wait_for(child: Child, test: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = test()
        if result:
            return result
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode} before {what}:\n"
                               f"{child.output()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{child.name}: no {what} within {timeout:g} s:\n{child.output()[-3000:]}")


def start_bus() -> tuple[Child, int]:
    """The development bus on an ephemeral port; returns it and the port."""
    child = Child("bus", [sys.executable, "-m", "sbusr.cmd.bus", "--host", HOST, "--port", "0",
                         "--unit-id", str(BUS_UNIT), "--log-level", "WARNING"])

    def port() -> int | None:
        for line in child.output().splitlines():
            if line.startswith("listening on "):
                return int(line.rsplit(":", 1)[1])
        return None

    return child, _wait_for(child, port, "listening line", 15.0)


def write_server_config(path: Path, bus_port: int, mode: str, workers: int | None, client: str,
                        extra: list[str] | None = None) -> Path:
    """The server's config file; ``extra`` holds ``section.name=value`` overrides."""
    sections: dict[str, dict[str, str]] = {
        "DEFAULT": {"transport_url": f"smartbus://{HOST}:{bus_port}/?unit_id={SERVER_UNIT}"
                                     f"&client_id={SERVER_CLIENT}"},
        "smartbus": {"backend": client},
        "execution": {"mode": mode},
        "metrics": {"port": "0"},  # no fixed port: the bench reads its figures, not the metrics listener
    }
    if workers is not None:
        sections["execution"]["workers"] = str(workers)
    for item in extra or []:
        key, _, value = item.partition("=")
        section, _, name = key.strip().partition(".")
        sections.setdefault(section, {})[name] = value.strip()
    lines: list[str] = []
    for section, options in sections.items():
        lines += [f"[{section}]", *(f"{name} = {value}" for name, value in options.items()), ""]
    path.write_text("\n".join(lines))
    return path


def start_server(config_file: Path, prefix: list[str] | None = None) -> Child:
    """``sbusr-server`` (optionally under a profiler ``prefix``); waits until it serves."""
    argv = [*(prefix or []), sys.executable, "-m", "sbusr.cmd.server", "--config-file", str(config_file)]
    child = Child("server", argv, wrapped=bool(prefix))
    _wait_for(child, lambda: " serving " in child.output() and "registered on SmartBus" in child.output(),
              "'serving' and 'registered' log lines", 60.0)
    return child


def start_echo(bus_port: int, kind: str) -> Child:
    child = Child("echo", [sys.executable, "-m", "sbusr.bench.echo", "--host", HOST, "--port", str(bus_port),
                           "--unit", str(ECHO_UNIT), "--client", str(ECHO_CLIENT), "--kind", kind],
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.proc.stdout is not None
    ready, _, _ = select.select([child.proc.stdout], [], [], 20.0)
    line = child.proc.stdout.readline() if ready else b""
    if line.strip() != b"ready":
        child.stop()
        raise RuntimeError(f"echo client did not register:\n{child.output()[-3000:]}")
    return child


class LoadProcess(Child):
    """A load generator (:mod:`sbusr.bench.loadgen`) driven by JSON lines."""

    def __init__(self, bus_port: int, unit: int) -> None:
        super().__init__(f"load{unit}", [sys.executable, "-m", "sbusr.bench.loadgen", "--host", HOST,
                                         "--port", str(bus_port), "--unit", str(unit)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.unit = unit

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"load generator {self.unit} gave no answer "
                               f"(exit {self.proc.poll()}):\n{self.output()[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"load generator {self.unit}: {answer['error']}")
        return answer

    def begin_stop(self) -> None:
        if self.alive():
            with contextlib.suppress(OSError, ValueError):
                self.send({"op": "quit"})

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(OSError, ValueError):
                self.send({"op": "quit"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(3.0)
        super().stop()
