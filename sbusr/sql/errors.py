"""Database failures as JSON-RPC errors: -32050 "database error", -32051 "database unavailable".

The DB-API drivers each describe an error their own way; :func:`describe` reads the SQLSTATE
(PostgreSQL always has one), the driver's native code (MySQL's errno, SQLite's error name) and the
database's own message, so the caller gets them in ``data`` whatever the database.
"""

from __future__ import annotations

from typing import Any

from sbusr.jsonrpc.errors import MAX_ERROR_TEXT, RpcError, cut

DATABASE_ERROR = -32050
DATABASE_UNAVAILABLE = -32051

#: SQLSTATE classes and codes meaning "the database is not there" rather than "the statement failed":
#: connection exceptions, the server shutting down or starting up
_UNAVAILABLE_CLASSES = ("08",)
_UNAVAILABLE_CODES = frozenset({"57P01", "57P02", "57P03", "53300"})
#: the statement was stopped by the database's own time limit (PostgreSQL, MySQL, MariaDB)
_TIMEOUT_SQLSTATES = frozenset({"57014"})
_TIMEOUT_MYSQL_ERRNOS = frozenset({3024, 1969})


class DatabaseError(RpcError):
    """-32050: the database refused or failed the statement (``data``: sqlstate, code, message)."""

    def __init__(self, message: str, data: dict[str, Any]) -> None:
        super().__init__(DATABASE_ERROR, message, data)


class DatabaseUnavailable(RpcError):
    """-32051: no connection to the database could be had or kept."""

    def __init__(self, message: str, data: dict[str, Any]) -> None:
        super().__init__(DATABASE_UNAVAILABLE, message, data)


def original(exc: BaseException) -> BaseException:
    """The driver's exception inside a SQLAlchemy wrapper (``.orig``), else ``exc``."""
    inner = getattr(exc, "orig", None)
    return inner if isinstance(inner, BaseException) else exc


def describe(exc: BaseException) -> dict[str, Any]:
    """``{"sqlstate", "code", "message"}`` of a driver exception (None where the driver has none)."""
    exc = original(exc)
    sqlstate = getattr(exc, "sqlstate", None)  # psycopg
    code: Any = getattr(exc, "sqlite_errorname", None)  # sqlite3
    message = None
    diag = getattr(exc, "diag", None)
    if diag is not None:
        message = getattr(diag, "message_primary", None)
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if code is None and len(args) >= 2 and isinstance(args[0], int):  # PyMySQL: (errno, message)
        code, message = args[0], str(args[1])
    if not message:
        message = str(exc).strip() or type(exc).__name__
    return {"sqlstate": sqlstate if isinstance(sqlstate, str) else None, "code": code,
            "message": cut(message.strip(), MAX_ERROR_TEXT)}


def is_unavailable(details: dict[str, Any]) -> bool:
    """True when the failure is the database going away, not the statement."""
    sqlstate = details.get("sqlstate") or ""
    return sqlstate.startswith(_UNAVAILABLE_CLASSES) or sqlstate in _UNAVAILABLE_CODES


def is_timeout(details: dict[str, Any]) -> bool:
    """True when the database stopped the statement at its time limit."""
    return (details.get("sqlstate") in _TIMEOUT_SQLSTATES or details.get("code") in _TIMEOUT_MYSQL_ERRNOS
            or details.get("code") == "SQLITE_INTERRUPT")


def database_error(database: str, details: dict[str, Any]) -> DatabaseError:
    first_line = details["message"].splitlines()[0] if details["message"] else ""
    return DatabaseError(f"database error: {first_line}", {"database": database, **details})


def unavailable(database: str, details: dict[str, Any]) -> DatabaseUnavailable:
    first_line = details["message"].splitlines()[0] if details["message"] else ""
    return DatabaseUnavailable(f"database unavailable: {first_line}", {"database": database, **details})
