"""Everything a method writer decorates or raises, in one import (like uWSGI's ``uwsgidecorators``).

    from sbusr.decorators import RpcError, SpoolRetry, cron, limits, spool, timer

Importing it loads no bus, driver or server code: these only mark functions and classes that
sbusr-server finds when it loads the endpoint modules.
"""

from sbusr.jsonrpc import RpcError
from sbusr.limits import limits
from sbusr.schedule import cron, timer
from sbusr.spooler.jobs import SpoolRetry, spool

__all__ = ["RpcError", "SpoolRetry", "cron", "limits", "spool", "timer"]
