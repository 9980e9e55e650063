"""``python -m sbusr.cmd.stack``: the whole development stack in one terminal (``make run``).

Starts ``sbusr-server`` (which hosts the embedded development bus when the
config enables it) and then ``sbusr-api`` as separate processes with the same
arguments, forwards Ctrl-C/SIGTERM to both, and exits when either one exits.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    server = subprocess.Popen([sys.executable, "-m", "sbusr.cmd.server", *args])
    time.sleep(1.0)  # let the server bind the embedded bus before the API connects to it
    api = subprocess.Popen([sys.executable, "-m", "sbusr.cmd.api", *args])
    children = [server, api]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        forward(signal.SIGTERM, None)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
    return max(child.returncode or 0 for child in children)


if __name__ == "__main__":
    sys.exit(main())
