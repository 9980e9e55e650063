"""``sbusr.timer.run``: the built-in method through which sbusr-server's scheduler runs each tick.

A tick is an ordinary JSON-RPC call that the server sends to its own SmartBus address, so it runs
where calls run (a thread, or a worker process in process mode) with the same time limit, busy
and crash handling. Only the server itself may call it: the caller's address must be the
server's (``SBUSR_SERVER_ADDRESS``, which sbusr-server sets for itself and its children), and only
functions marked ``@timer``/``@cron`` can be run.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import oslo_messaging

from sbusr import dispatch
from sbusr.jsonrpc.errors import InvalidRequest
from sbusr.timers import schedule

LOG = logging.getLogger("sbusr.timer")

#: environment variable holding the "unit:client" address of the sbusr-server that owns the timers
ADDRESS_ENV = "SBUSR_SERVER_ADDRESS"


def _from_server(ctxt: Any) -> bool:
    own = os.environ.get(ADDRESS_ENV)
    source = ctxt.get("source") if isinstance(ctxt, dict) else None
    if not own or not isinstance(source, dict):
        return False
    return f"{source.get('unit')}:{source.get('client')}" == own


class TimerEndpoint:
    """Runs one tick of a ``@timer``/``@cron`` function."""

    target = oslo_messaging.Target(namespace="sbusr.timer")

    def run(self, ctxt: Any, module: str, qualname: str, kind: str, source: str) -> dict[str, Any]:
        """Run the function once; its exception is logged here with the traceback and reported."""
        if not _from_server(ctxt):
            raise InvalidRequest("sbusr.timer.run is accepted only from this sbusr-server")
        try:
            loaded = dispatch.module_for(kind, source)
        except (Exception, SystemExit) as exc:
            LOG.exception("timer %s: cannot load %s", qualname, source)
            return {"outcome": "error", "error": f"cannot load {source}: {type(exc).__name__}: {exc}"}
        func = getattr(loaded, qualname, None) if loaded.__name__ == module else None
        if func is None or not isinstance(getattr(func, schedule.TIMER_ATTR, None), schedule.Schedule):
            return {"outcome": "error", "error": f"{module}:{qualname} is not a timer function (any more)"}
        try:
            func()
        except (Exception, SystemExit) as exc:
            LOG.exception("timer %s raised", schedule.display_name(kind, source, qualname))
            return {"outcome": "error", "error": f"{type(exc).__name__}: {exc}"}
        return {"outcome": "ok"}
