"""One SQL call: a pooled connection, one transaction, the result shaped by the statement's suffix.

Statements run on the DB-API connection that SQLAlchemy's pool hands out, with the SQL aiosql parsed
(:mod:`sbusr.sql.paramstyle` writes its params in the driver's style). Running them through aiosql's
generated functions would give tuples without column names and hide the cursor, which sbusr needs
for the column names, the row count, the database's time limit on the same connection and the
transaction.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from sbusr.jsonrpc.errors import CallTimeout, InternalError, RpcError, ServerBusy
from sbusr.sql import errors, timeouts
from sbusr.sql.databases import Database
from sbusr.sql.paramstyle import Prepared
from sbusr.sql.pools import POOLS, PoolSettings
from sbusr.sql.statements import Shape, Statement

LOG = logging.getLogger("sbusr.sql")

#: rows read for one reply: far more than a 15,999-byte SmartBus reply can carry, yet bounded, so a
#: statement that selects a whole table cannot fill a worker's memory
MAX_ROWS = 8000


class _Health:
    """Whether each database answered last time: one WARNING when it goes, one INFO when it is back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down: set[str] = set()

    def down(self, name: str, why: str) -> None:
        with self._lock:
            if name in self._down:
                return
            self._down.add(name)
        LOG.warning("database %s is unavailable (%s); its calls get %d until it is back", name, why,
                    errors.DATABASE_UNAVAILABLE)

    def up(self, name: str) -> None:
        if name not in self._down:  # the common case, without the lock
            return
        with self._lock:
            if name not in self._down:
                return
            self._down.discard(name)
        LOG.info("database %s is available again", name)


HEALTH = _Health()


class BoundStatement:
    """A statement of a file bound to its database; :meth:`run` is one call."""

    def __init__(self, statement: Statement, database: Database, settings: PoolSettings) -> None:
        self.statement = statement
        self.database = database
        self.settings = settings
        self._prepared: Prepared | None = None
        self._pool: Engine | None = None

    def _engine(self) -> Engine:
        engine = self._pool
        if engine is None:  # first call: the process's pool for this database (shared by its statements)
            engine = self._pool = POOLS.engine(self.database.url, self.settings)
        return engine

    def _prepare(self, engine: Engine) -> Prepared:
        prepared = self._prepared
        if prepared is None:
            prepared = Prepared(self.statement.sql, engine.dialect.paramstyle, engine.dialect.name)
            self._prepared = prepared
        return prepared

    def run(self, values: dict[str, Any], timeout: float, label: str) -> Any:
        """Run with ``values`` (by param name) within ``timeout`` seconds (0: none)."""
        name = self.database.name
        engine = self._engine()
        try:
            connection = engine.raw_connection()  # pre-pinged; reconnects when the ping fails
        except sa_exc.TimeoutError:
            raise ServerBusy(f"no free connection to database {name}") from None
        except Exception as exc:  # refused, unknown host, bad password: the database is not there for us
            details = errors.describe(exc)
            HEALTH.down(name, details["message"])
            raise errors.unavailable(name, details) from None
        cursor = None
        undo = timeouts.apply_nothing
        try:
            cursor = connection.cursor()
            undo = timeouts.apply(engine.dialect, connection.dbapi_connection, cursor, timeout)
            prepared = self._prepare(engine)
            cursor.execute(prepared.sql, prepared.params(values))
            result = _shaped(cursor, self.statement.shape, label)
            connection.commit()
        except Exception as exc:
            raise self._failure(exc, engine, connection, cursor, timeout, label) from None
        finally:
            _quietly(undo)
            if cursor is not None:
                _quietly(cursor.close)
            _quietly(connection.close)  # back to the pool (rolled back there if still open)
        HEALTH.up(name)
        return result

    def _failure(self, exc: Exception, engine: Engine, connection: Any, cursor: Any, timeout: float,
                 label: str) -> Exception:
        """The error for the caller; the transaction is rolled back, a dead connection dropped."""
        name = self.database.name
        if isinstance(exc, RpcError):
            _quietly(connection.rollback)
            return exc
        dbapi = engine.dialect.loaded_dbapi
        if not isinstance(exc, dbapi.Error):
            _quietly(connection.rollback)
            return exc  # not the database's: a bug, reported as one (-32000, with its traceback logged)
        details = errors.describe(exc)
        gone = engine.dialect.is_disconnect(exc, connection.dbapi_connection, cursor)
        if gone or errors.is_unavailable(details):
            _quietly(connection.invalidate)
            HEALTH.down(name, details["message"])
            return errors.unavailable(name, details)
        _quietly(connection.rollback)
        if timeout and errors.is_timeout(details):
            LOG.warning("%s: database %s stopped the statement at the call's %g s limit",
                        label, name, timeout)
            return CallTimeout(f"{label} did not finish within {timeout:g} s", {"timeout": timeout})
        return errors.database_error(name, details)


def _columns(cursor: Any) -> list[str] | None:
    description = cursor.description
    return None if description is None else [str(column[0]) for column in description]


def _shaped(cursor: Any, shape: Shape, label: str) -> Any:
    if shape is Shape.ROWCOUNT:
        return cursor.rowcount
    columns = _columns(cursor)
    if shape is Shape.ROWS:
        if columns is None:
            return []
        rows = cursor.fetchmany(MAX_ROWS + 1)
        if len(rows) > MAX_ROWS:
            raise InternalError(f"{label} selected more than {MAX_ROWS} rows; "
                                        "no reply can carry them")
        return [dict(zip(columns, row, strict=True)) for row in rows]
    if columns is None:
        return None
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip(columns, row, strict=True)) if shape is Shape.ROW else row[0]


def _quietly(step: Any) -> None:
    try:
        step()
    except Exception:  # a dead connection cannot roll back or close; the pool replaces it
        LOG.debug("cleanup step failed", exc_info=True)
