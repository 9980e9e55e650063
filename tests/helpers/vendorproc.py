"""Test driver for tests/vendor_agent.py: one vendor SmartBus client per subprocess."""

from __future__ import annotations

import collections
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

AGENT = Path(__file__).resolve().parent.parent / "vendor_agent.py"

Event = dict[str, Any]


class AgentError(AssertionError):
    """The agent did not produce what a test waited for (carries its stderr tail)."""


class VendorAgent:
    """Start an agent, send it commands, wait for its JSON events, stop it.

    Every event is kept; :meth:`mark` returns a position so later waits can skip
    what happened before (e.g. the first connection when waiting for a reconnect).
    """

    def __init__(self, port: int, unit: int, client: int = 0, client_type: int = 19, *,
                 host: str = "127.0.0.1", user: str = "", password: str = "", add_info: str = "",
                 backend: bool = False) -> None:
        self.unit, self.client, self.type = unit, client, client_type
        self.args = [sys.executable, str(AGENT), "--host", host, "--port", str(port), "--unit", str(unit),
                     "--client", str(client), "--type", str(client_type), "--user", user,
                     "--password", password, "--add-info", add_info]
        if backend:
            self.args.append("--backend")
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._seq = itertools.count(1)
        self._threads: list[threading.Thread] = []

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 15.0) -> VendorAgent:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        for target, stream in ((self._read_events, self.proc.stdout), (self._read_stderr, self.proc.stderr)):
            t = threading.Thread(target=target, args=(stream,), daemon=True)
            t.start()
            self._threads.append(t)
        started = self.wait_for(lambda e: e["event"] == "started", timeout)
        if started.get("rc") != 0:
            raise AgentError(f"agent failed to start: {started}\n{self.stderr_tail()}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self._write({"op": "quit"})
            except OSError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for t in self._threads:
            t.join(timeout)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        self.proc = None

    def kill(self) -> None:
        """Die without a goodbye (the bus sees the socket close)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.stop()

    def __enter__(self) -> VendorAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- I/O

    def _read_events(self, stream: Any) -> None:
        for raw in stream:
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"event": "garbage", "line": raw.decode("utf-8", "replace")}
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "eof"})
            self._cond.notify_all()

    def _read_stderr(self, stream: Any) -> None:
        for raw in stream:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip())

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def _write(self, cmd: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10.0, since: int = 0) -> Event:
        """First event at or after ``since`` that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        pos = since
        with self._cond:
            while True:
                while pos < len(self.events):
                    event = self.events[pos]
                    pos += 1
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        raise AgentError(f"no matching event within {timeout} s; events since {since}: "
                         f"{self.events[since:][-20:]}\nstderr:\n{self.stderr_tail()}")

    def find(self, predicate: Callable[[Event], bool], since: int = 0) -> list[Event]:
        with self._cond:
            return [e for e in self.events[since:] if predicate(e)]

    def send(self, op: str, timeout: float = 10.0, **fields: Any) -> Event:
        """Run one command; return its result event (which holds ``rc``)."""
        seq = next(self._seq)
        mark = self.mark()
        self._write({"op": op, "seq": seq, **fields})
        return self.wait_for(lambda e: e["event"] == "result" and e.get("seq") == seq, timeout, since=mark)

    # ----------------------------------------------------------------- common waits

    def wait_connected(self, timeout: float = 15.0, since: int = 0) -> Event:
        return self.wait_for(lambda e: e["event"] == "connection" and e["ack"] == 0, timeout, since)


def vendor_unavailable() -> str | None:
    """Why the vendor library cannot load here, or None when it can (the only reason to skip)."""
    import platform

    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"libbusnetcli.so is built for Linux x86_64 only, not {platform.system()} {platform.machine()}"
    from sbusr.smartbus.vendor import binding

    try:
        binding.find_library()
    except FileNotFoundError as exc:
        return str(exc)
    return None
