"""Run a real ``sbusr-api`` process (``python -m sbusr.cmd.api``) against a test bus and talk HTTP to it.

A subprocess rather than the application in the pytest process because the vendor backend
(``libbusnetcli.so``) allows one unit id and one start per client id per process and aborts at
interpreter exit; running both backends this way keeps their tests identical.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbusr.testing.processes import SERVER_CLIENT, SERVER_UNIT, ReadyPipe, free_port, write_config
from sbusr.util.procs import die_with_parent, terminate

START_TIMEOUT = 120.0  # returns as soon as ready; a busy 2-core machine starts Python slowly
STOP_TIMEOUT = 20.0
#: the API's own unit id: a net-client unit (16..47, as the vendor library needs), not the server's
API_UNIT = 21


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class ApiProcess:
    """``sbusr-api`` with its own config file and a free HTTP port; start() waits until it answers HTTP.

    The config's transport URL is the sbusr-server's identity (``server``, by default
    SERVER_UNIT:SERVER_CLIENT), as in a shared production config; the API's own identity is
    ``[api] unit_id``/``client_id``.
    """

    host = "127.0.0.1"

    def __init__(self, config_dir: Path, bus_port: int, *, backend: str = "native", client_id: int,
                 unit_id: int = API_UNIT, api: dict[str, Any] | None = None,
                 smartbus: dict[str, Any] | None = None,
                 server: tuple[int, int] = (SERVER_UNIT, SERVER_CLIENT)) -> None:
        self.port = free_port(self.host)
        self.unit_id, self.client_id = unit_id, client_id
        self.backend = backend
        sections = {
            "smartbus": {"backend": backend, "connect_timeout": 5, **(smartbus or {})},
            "api": {"listen_host": self.host, "listen_port": self.port, "unit_id": unit_id,
                    "client_id": client_id, **(api or {})},
        }
        self.config_file = write_config(config_dir / f"api-{backend}-{unit_id}-{client_id}.conf", bus_port,
                                        sections, unit=server[0], client=server[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="sbusr-api-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ApiProcess:
        """Start and wait for its ``ready`` event (``SBUSR_READY_FD``): it listens for HTTP and its
        first registration on the bus ended (waiting up to ``connect_timeout``)."""
        pipe = ReadyPipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sbusr.cmd.api", "--config-file", str(self.config_file)],
                stdout=self._log, stderr=subprocess.STDOUT, pass_fds=pipe.pass_fds,
                env=pipe.env(dict(os.environ, PYTHONUNBUFFERED="1")), preexec_fn=die_with_parent(os.getpid()))
            pipe.wait(self.proc, "ready", START_TIMEOUT, "sbusr-api", self.output)
        except BaseException:
            self.stop()
            raise
        finally:
            pipe.close()
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit on its own; its exit code."""
        assert self.proc is not None
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, SIGKILL if it hangs; the exit code (None if it never started)."""
        if self.proc is None:
            return None
        self.returncode = terminate(self.proc, timeout)
        return self.returncode

    def close(self) -> None:
        """Stop and remove the log file."""
        self.stop()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def output(self) -> str:
        """Everything the process logged so far."""
        return Path(self._log.name).read_text(errors="replace")

    def __enter__(self) -> ApiProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30.0) -> Response:
        """One HTTP request on a fresh connection; raises OSError when nothing answers."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            conn.close()

    def try_request(self, method: str, path: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None, timeout: float = 30.0) -> Response | None:
        """Like :meth:`request`, but None when nothing listens (or the connection breaks)."""
        try:
            return self.request(method, path, body, headers, timeout)
        except (OSError, http.client.HTTPException):
            return None

    # ------------------------------------------------------------------ the start_flow side

    def start_flow(self, project: str, flow: str, params: list[Any] | None = None, *, wait: bool = False,
                   server: int | None = None, process: int | None = None,
                   headers: dict[str, str] | None = None, timeout: float = 60.0) -> Response:
        """``POST /api/flow`` as an HTTP client starting an IPSC flow would; the response as is."""
        body: dict[str, Any] = {"project": project, "flow": flow, "params": list(params or []), "wait": wait}
        if server is not None:
            body["server"] = server
        if process is not None:
            body["process"] = process
        return self.request("POST", "/api/flow", json.dumps(body).encode("utf-8"),
                            {"Content-Type": "application/json", **(headers or {})}, timeout)
