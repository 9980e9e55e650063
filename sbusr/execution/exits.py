"""How a child process ended, in the words the logs and -32003 replies use."""

from __future__ import annotations

import signal


def describe_exit(code: int | None) -> str:
    """``Popen.returncode`` as text: "exit code 3", "killed by SIGKILL", or "exit status unknown"."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
