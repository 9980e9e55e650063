"""The process's resident memory as ``top`` shows it, for a bus whose budget bounds it.

Connection buffers are big ``bytearray`` objects: with glibc's fixed mmap threshold each lives in
its own mapping, so freeing one (a dropped connection) gives its pages back to the system at once
instead of leaving them in the heap, where the resident set would stay high.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

import psutil

LOG = logging.getLogger(__name__)

#: glibc mallopt() parameter: allocations at least this big get their own mapping
_M_MMAP_THRESHOLD = -3
#: buffers this size or bigger are mapped (and unmapped when freed)
MMAP_THRESHOLD = 128 * 1024


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
