"""Waiting on child processes in tests: poll a condition, tell a live process from a zombie."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sbusr.util import procs

T = TypeVar("T")


def eventually(predicate: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """The first truthy value of ``predicate()`` within ``timeout`` s, else its last value (for
    ``assert eventually(...)``, whose failure shows what was seen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return procs.alive(pid)
