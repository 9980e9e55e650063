"""Run a real ``sbusr-server`` process against a test bus, configured through a temp config file."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sbusr.bench.procs import terminate

START_TIMEOUT = 30.0
SERVER_UNIT = 19
SERVER_CLIENT = 1


def write_config(path: Path, bus_port: int, sections: dict[str, dict[str, Any]] | None = None,
                 unit: int = SERVER_UNIT, client: int = SERVER_CLIENT) -> Path:
    """A config file whose transport_url points at the test bus; ``sections`` add options."""
    sections = {k: dict(v) for k, v in (sections or {}).items()}
    default = sections.setdefault("DEFAULT", {})
    default.setdefault("transport_url", f"smartbus://127.0.0.1:{bus_port}/?unit_id={unit}&client_id={client}")
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
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sbusr-server exited with {self.proc.returncode}:\n{self.output()}")
            out = self.output()
            if " serving " in out and "registered on SmartBus" in out:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sbusr-server did not start within {START_TIMEOUT} s:\n{self.output()}")

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
