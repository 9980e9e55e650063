"""The call's time limit, enforced by the database as well, so that no statement outlives its caller.

sbusr answers -32001 when a call passes its limit (thread mode's watchdog, process mode's master);
the database stops the statement at the same limit: PostgreSQL's ``statement_timeout`` (for this
transaction only), MariaDB's ``max_statement_time``, MySQL's ``max_execution_time`` (SELECTs only:
MySQL has no limit for other statements), SQLite through a progress handler that interrupts the
statement in this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: SQLite: VM instructions between two looks at the clock
_SQLITE_STEPS = 10_000


def apply(dialect: Any, dbapi_connection: Any, cursor: Any, seconds: float) -> Callable[[], None]:
    """Limit the statements of this call to ``seconds`` (0: none); returns the undo step.

    The limit is a value sbusr computed, bound as a param where the database allows it. With no
    limit, a database's own default (a role's ``statement_timeout``, say) stays in force.
    """
    name = dialect.name
    if name in ("mysql", "mariadb"):  # a session setting: set on every call, "no limit" included
        variable = "max_statement_time" if getattr(dialect, "is_mariadb", False) else "max_execution_time"
        if seconds <= 0:
            cursor.execute(f"SET SESSION {variable} = DEFAULT")
        elif variable == "max_statement_time":
            cursor.execute("SET SESSION max_statement_time = %s", (float(seconds),))
        else:
            cursor.execute("SET SESSION max_execution_time = %s", (_milliseconds(seconds),))
        return _nothing
    if seconds <= 0:  # no limit: the database's own settings apply
        return _nothing
    if name == "postgresql":
        cursor.execute("select set_config('statement_timeout', %s, true)", (str(_milliseconds(seconds)),))
        return _nothing
    if name == "sqlite":
        deadline = time.monotonic() + seconds
        dbapi_connection.set_progress_handler(lambda: time.monotonic() > deadline, _SQLITE_STEPS)
        return lambda: dbapi_connection.set_progress_handler(None, 0)
    return _nothing


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _nothing() -> None:
    return None


apply_nothing = _nothing
