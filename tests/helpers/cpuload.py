"""CPU load a test makes itself: one busy-loop process per core (as CI runs beside the suite), so
with the server's own threads and the test's callers the machine has more to run than it has cores
and start and stop edges are exercised on a machine busier than the server can keep up with."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sbusr.util.procs import die_with_parent

BUSY_LOOP = "while True:\n    pass\n"


@contextmanager
def busy_cpus(extra: int = 0) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``os.cpu_count() + extra`` busy loops for the duration of the block; killed at its end."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                              preexec_fn=die_with_parent(os.getpid()))
             for _ in range((os.cpu_count() or 1) + extra)]
    try:
        yield loops
    finally:
        for proc in loops:
            proc.kill()
        for proc in loops:
            proc.wait()
