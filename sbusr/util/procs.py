"""Child processes and what the OS says about them, for the test kit, the benchmark and the spooler.

Starting and stopping children (parent-death signal, SIGTERM then SIGKILL, a whole process group) is
the same everywhere a sbusr program or test owns a child, and reading a process's memory, CPU time or
descendants is psutil's job rather than /proc parsing of our own.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import psutil

STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up in the parent so the child makes one libc call between fork and exec."""
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None
    return prctl


_prctl = _load_prctl()


def set_parent_death_signal(parent: int, signum: int = signal.SIGTERM) -> None:
    """In the current process: receive ``signum`` when ``parent`` dies; exit now if it already has.

    Linux semantics: "parent" is the *thread* that forked this process.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signum)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``signum`` when ``parent`` dies (None off Linux).

    A killed pytest or benchmark runner then leaves no orphan bus, server or database behind. Start
    the child from a thread that outlives it (the main thread does).
    """
    if _prctl is None:
        return None

    def preexec() -> None:
        set_parent_death_signal(parent, signum)

    return preexec


def process_name() -> str:
    """This process's name as ``ps -o comm`` shows it ("" off Linux)."""
    try:
        with open("/proc/self/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def set_process_name(name: str) -> None:
    """Set the name ``ps -o comm`` and psutil's ``name()`` show (15 bytes at most; no-op off Linux)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/comm", "w", encoding="utf-8") as fh:
            fh.write(name[:15])


def terminate(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, wait up to ``timeout``, SIGKILL if it hangs; the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def stop_group(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """Stop a process started with ``start_new_session`` and everything in its group.

    Ctrl-C first, to the whole group: profilers such as py-spy write their output on SIGINT, and
    signalling the leader alone can leave its children behind. Then SIGTERM and finally SIGKILL for
    whatever is left (e.g. a child a shell started in the background, which ignores SIGINT).
    """
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # nobody left in the group
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader so that it does not linger as a zombie member
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has finished for every purpose here)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def children(pid: int, recursive: bool = False) -> list[int]:
    """Pids of ``pid``'s living children (all descendants with ``recursive``); [] when it is gone."""
    try:
        kids = psutil.Process(pid).children(recursive=recursive)
    except psutil.Error:
        return []
    return [kid.pid for kid in kids if alive(kid.pid)]


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (process-mode worker pools)."""
    return children(pid, recursive=True)


def rss_kb(pid: int) -> int | None:
    """Resident memory of one process in KiB (None when it is gone)."""
    try:
        return int(psutil.Process(pid).memory_info().rss // 1024)
    except psutil.Error:
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds one process has used so far (None when it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)
