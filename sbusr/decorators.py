"""Everything a method writer decorates or raises, in one import (like uWSGI's ``uwsgidecorators``).

    from sbusr.decorators import RpcError, SpoolRetry, cron, limits, spool, timer

Importing it loads no bus, driver or server code: these only mark functions and classes that
sbusr-server finds when it loads the endpoint modules.
"""

from sbusr.execution.limits import limits
from sbusr.jsonrpc.errors import RpcError
from sbusr.spooler.jobs import SpoolRetry, spool
from sbusr.timers.schedule import cron, timer

__all__ = ["RpcError", "SpoolRetry", "cron", "limits", "spool", "timer"]
