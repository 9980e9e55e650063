"""Tell a supervisor (or a test) the moment a program is ready, without it reading the logs.

When the environment has ``SBUSR_READY_FD=N`` (the write end of a pipe the program inherited),
sbusr-bus, sbusr-api and sbusr-server write one JSON line to it per event:

* ``{"event": "ready", "program": ..., ...}`` -- sbusr-bus accepts connections; sbusr-api listens
  for HTTP and its first registration on the bus ended (``"connected"`` says how); sbusr-server
  serves its methods and is registered on the bus (thread and process mode alike);
* ``{"event": "standby", "program": "sbusr-server", ...}`` -- sbusr-server serves, but the bus
  refused its identity (another server holds it): a hot standby. ``ready`` follows on takeover.

Each event is written at most once. :func:`setup` takes the variable out of the environment, so
child processes (workers, spoolers) never write to a descriptor they did not inherit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from typing import Any

ENV = "SBUSR_READY_FD"
LOG = logging.getLogger("sbusr.ready")


class _Notifier:
    """The pipe and what the program still waits for before it is ready."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._program = ""
        self._missing: set[str] = set()
        self._fields: dict[str, Any] = {}
        self._sent: set[str] = set()
        self._marked: set[str] = set()
        self._pending: dict[str, set[str]] = {}  # event -> conditions it waits for

    def setup(self, program: str, needs: set[str]) -> None:
        value = os.environ.pop(ENV, None)
        if value is None:
            return
        try:
            fd = int(value)
            os.set_inheritable(fd, False)
        except (ValueError, OSError) as exc:
            LOG.warning("%s=%r is not an open file descriptor (%s); no ready notification", ENV, value, exc)
            return
        with self._lock:
            self._fd, self._program, self._missing = fd, program, set(needs)

    def forget(self) -> None:
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd = None

    def mark(self, condition: str, fields: dict[str, Any]) -> None:
        with self._lock:
            self._fields.update(fields)
            self._marked.add(condition)
            self._missing.discard(condition)
            if not self._missing:
                self._write("ready")
            for name, after in list(self._pending.items()):
                if after <= self._marked:
                    del self._pending[name]
                    self._write(name)

    def event(self, name: str, after: set[str], fields: dict[str, Any]) -> None:
        with self._lock:
            self._fields.update(fields)
            if after <= self._marked:
                self._write(name)
            else:
                self._pending[name] = set(after)

    def _write(self, name: str) -> None:
        if self._fd is None or name in self._sent:
            return
        self._sent.add(name)
        line = json.dumps({"event": name, "program": self._program, "pid": os.getpid(), **self._fields})
        try:
            os.write(self._fd, line.encode("utf-8") + b"\n")  # one short line: atomic on a pipe
        except OSError as exc:  # nobody reads any more: the program runs on regardless
            LOG.debug("ready notification not written: %s", exc)


_NOTIFIER = _Notifier()


def setup(program: str, needs: set[str] | frozenset[str] = frozenset({"started"})) -> None:
    """Called once by a program's main: notify ``ready`` once every condition in ``needs`` was marked."""
    _NOTIFIER.setup(program, set(needs))


def forget() -> None:
    """In a forked copy of the program (the process-mode fork server): close the descriptor, so
    only the program itself notifies and its end closes the pipe."""
    _NOTIFIER.forget()


def mark(condition: str, **fields: Any) -> None:
    """One of the conditions of readiness holds; ``fields`` go into the notification."""
    _NOTIFIER.mark(condition, fields)


def event(name: str, after: frozenset[str] = frozenset(), **fields: Any) -> None:
    """Another event than ``ready`` (e.g. ``standby``), written (at most once) as soon as every
    condition in ``after`` was marked."""
    _NOTIFIER.event(name, set(after), fields)
