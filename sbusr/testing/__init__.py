"""Testing helpers for method writers.

* :func:`call` / :class:`Methods` -- a method through the server's dispatch, no bus (fast, in-process);
* :class:`Stack` -- a real development bus, sbusr-server, IPSC stand-in and sbusr-api, on free ports;
* the pytest plugin (:mod:`sbusr.testing.plugin`) -- the ``sbusr`` and ``sbusr_stack`` fixtures.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Methods", "RpcError", "Stack", "call", "queued_jobs"]


def __getattr__(name: str) -> Any:
    # lazy: `import sbusr.testing` (e.g. by the pytest plugin) must not import oslo.messaging
    if name in ("call", "Methods", "queued_jobs"):
        from sbusr.testing import calls

        return getattr(calls, name)
    if name == "Stack":
        from sbusr.testing.stack import Stack

        return Stack
    if name == "RpcError":
        from sbusr.jsonrpc.errors import RpcError

        return RpcError
    raise AttributeError(name)
