"""The development bus's memory budget, and the process's resident memory as ``top`` shows it.

:class:`Budget` decides which connections must go when the bytes buffered across all of them (input
being framed, output queued) pass their share, or, with a process budget, when the resident set
nears it: the biggest first, so a misbehaving peer loses only its own connection.

Connection buffers are big ``bytearray`` objects: with glibc's fixed mmap threshold each lives in
its own mapping, so freeing one (a dropped connection) gives its pages back to the system at once
instead of leaving them in the heap, where the resident set would stay high.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Iterator
from typing import Generic, TypeVar

import psutil

LOG = logging.getLogger(__name__)

#: glibc mallopt() parameter: allocations at least this big get their own mapping
_M_MMAP_THRESHOLD = -3
#: buffers this size or bigger are mapped (and unmapped when freed)
MMAP_THRESHOLD = 128 * 1024

#: default total of bytes buffered across all connections (input being framed + output queued)
DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024
#: a connection buffering more than this makes the bus check the total budget
BUDGET_CHECK_BYTES = 1024 * 1024
#: with a process budget, the buffers' share: what the process does not use at rest, divided by this.
#: Growing a buffer the peer's reads have shortened at the front copies it (old and new both
#: resident for a moment), and read chunks and forwarded frames are copies too.
BUFFER_OVERHEAD = 2.5
#: with a process budget, room kept for everything but the buffers (read chunks, packets, logging)
PROCESS_RESERVE = 4 * 1024 * 1024
#: seconds between two measurements of the resident set while buffers grow
RSS_CHECK_INTERVAL = 0.01

Conn = TypeVar("Conn")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc (musl, macOS): resident memory is only measured
    return libc


@functools.cache
def _process() -> psutil.Process:
    return psutil.Process()


def resident_bytes() -> int:
    """This process's resident set size (RSS) in bytes."""
    return int(_process().memory_info().rss)


def map_big_buffers() -> bool:
    """Keep glibc from raising its mmap threshold, so freed big buffers leave the resident set."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def give_back_free_memory() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``); no-op elsewhere."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class Budget(Generic[Conn]):
    """Bytes the connections may buffer (``buffers``) and, optionally, the whole process's resident
    set (``process``, sbusr-bus's ``--memory-budget``)."""

    def __init__(self, buffers: int = DEFAULT_MEMORY_BUDGET, process: int | None = None) -> None:
        if buffers <= 0:
            raise ValueError("memory_budget must be positive")
        if process is not None and process <= 0:
            raise ValueError("process_budget must be positive")
        self.buffers = buffers
        self.process = process
        #: a connection buffering more than this many bytes makes the bus call :meth:`offenders`
        self.check_bytes = BUDGET_CHECK_BYTES
        self._next_rss_check = 0.0

    def share_process(self) -> int:
        """With a process budget: give the buffers what the process does not use at rest, allowing for
        the copies they cost; the resident bytes at rest. ValueError when that leaves no room."""
        assert self.process is not None
        map_big_buffers()
        at_rest = resident_bytes()
        share = int((self.process - at_rest - PROCESS_RESERVE) / BUFFER_OVERHEAD)
        if share < 1024 * 1024:
            least = -(-(at_rest + PROCESS_RESERVE + int(BUFFER_OVERHEAD * 1024 * 1024)) // 2**20)
            raise ValueError(f"a memory budget of {self.process / 2**20:.0f} MiB leaves no room for "
                             f"connection buffers: the bus itself uses {at_rest / 2**20:.0f} MiB; give at "
                             f"least {least} MiB")
        self.buffers = min(self.buffers, share)
        self.check_bytes = min(BUDGET_CHECK_BYTES, max(64 * 1024, share // 64))
        return at_rest

    def offenders(self, usage: list[tuple[int, Conn]]) -> Iterator[tuple[Conn, str]]:
        """The connections to close, biggest first, each with the reason; ``usage`` is (bytes
        buffered, connection) of every open connection. Close each before asking for the next: the
        resident set is measured again after each."""
        total = sum(used for used, _ in usage)
        by_size = sorted(usage, key=lambda item: item[0], reverse=True)
        named: list[Conn] = []
        if total > self.buffers:
            for used, conn in by_size:
                if total <= self.buffers:
                    break
                named.append(conn)
                yield conn, (f"it holds {used} of the {total} bytes buffered across all connections "
                             f"(budget {self.buffers})")
                total -= used
        if self.process is not None:
            rest = [(used, conn) for used, conn in by_size if not any(conn is gone for gone in named)]
            yield from self._over_resident(rest)

    def _over_resident(self, by_size: list[tuple[int, Conn]]) -> Iterator[tuple[Conn, str]]:
        """Now and then, measure the resident set; near the budget, give free heap pages back, then
        name the connections buffering the most until it fits again."""
        now = time.monotonic()
        if now < self._next_rss_check:
            return
        self._next_rss_check = now + RSS_CHECK_INTERVAL
        assert self.process is not None
        limit = self.process - PROCESS_RESERVE // 2
        if resident_bytes() <= limit:
            return
        give_back_free_memory()
        resident = resident_bytes()
        for used, conn in by_size:
            if resident <= limit or used == 0:
                break
            yield conn, (f"the bus holds {resident} bytes resident (budget {self.process}) and this "
                         f"connection buffers the most ({used})")
            give_back_free_memory()
            resident = resident_bytes()
