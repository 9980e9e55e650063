"""Endpoints made of ``.sql`` files: ``NAME.sql`` is an oslo endpoint with ``Target(namespace=NAME)``.

Each statement becomes a static method of a generated class, with the statement's params as its
signature (the dispatcher's usual binding gives -32602 for a missing, unknown or extra param), the
statement's comment as its docstring and ``-- timeout: S`` as its ``@limits``. So SQL methods take
the same path as every other method: the RPCServer, sbusr's dispatcher, the execution layer's
time limits, the reply path, ``sys.methods``, the metrics.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import oslo_messaging
from oslo_config import cfg

from sbusr import opts
from sbusr.execution.limits import LIMITS_ATTR, Limits
from sbusr.jsonrpc.errors import InvalidParams
from sbusr.sql import databases as databases_module
from sbusr.sql.databases import Database
from sbusr.sql.pools import POOLS, PoolSettings
from sbusr.sql.runner import BoundStatement
from sbusr.sql.statements import Statement, StatementError, parse_file

LOG = logging.getLogger("sbusr.sql")

#: the request context's parameter name in generated signatures (positional-only: never a SQL param)
CTXT_PARAM = "sbusr_sql_ctxt"
#: JSON values a param may take: the driver binds them (lists: PostgreSQL arrays)
_BINDABLE = (str, int, float, bool, list, type(None))


@dataclass
class SqlEndpoint:
    """One file's generated endpoint, or why none could be made (``endpoint`` None)."""

    path: str
    name: str
    endpoint: Any = None
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SqlSettings:
    """What every SQL endpoint of one load shares."""

    databases: dict[str, Database]
    pool: PoolSettings
    call_timeout: float


def settings_from(conf: cfg.ConfigOpts) -> tuple[SqlSettings, list[str]]:
    """The ``[sql]`` and ``[execution]`` settings; problems with ``[sql] databases`` listed."""
    found, problems = databases_module.parse(list(conf.sql.databases))
    execution = conf.execution
    threads = execution.workers if execution.mode == "thread" else execution.threads
    # thread mode: as many again for calls abandoned past their limit, which hold theirs a while
    pool = PoolSettings(size=threads, overflow=threads, connect_timeout=conf.sql.connect_timeout)
    return SqlSettings(found, pool, execution.call_timeout), problems


def _method(bound: BoundStatement, namespace: str, class_name: str,
            default_timeout: float) -> Callable[..., Any]:
    statement = bound.statement
    names = statement.params
    label = f"{namespace}.{statement.name}"
    own = statement.timeout
    timeout = default_timeout if own is None else own

    def call(ctxt: Any, /, *args: Any, **kwargs: Any) -> Any:
        values = dict(zip(names, args, strict=False))  # bound already: no more args than names
        values.update(kwargs)
        for key, value in values.items():
            if not isinstance(value, _BINDABLE):
                raise InvalidParams(f"Invalid params for {label}: {key} must be a string, number, "
                                            "boolean, array or null")
        return bound.run(values, timeout, label)

    parameters = [inspect.Parameter(CTXT_PARAM, inspect.Parameter.POSITIONAL_ONLY)]
    parameters += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    call.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    call.__name__ = statement.name
    call.__qualname__ = f"{class_name}.{statement.name}"
    call.__doc__ = statement.doc or None
    if own is not None:
        setattr(call, LIMITS_ATTR, Limits(own))
    return call


def build(name: str, statements: list[Statement], database: Database, settings: SqlSettings) -> Any:
    """The endpoint object offering ``statements`` as the methods ``name.<statement>``."""
    class_name = f"Sql_{name}"
    attrs: dict[str, Any] = {"target": oslo_messaging.Target(namespace=name), "__module__": __name__,
                             "__doc__": f"SQL statements of {name}.sql, run on database {database}"}
    for statement in statements:
        bound = BoundStatement(statement, database, settings.pool)
        attrs[statement.name] = staticmethod(_method(bound, name, class_name, settings.call_timeout))
    return type(class_name, (), attrs)()


def load_file(path: str, settings: SqlSettings) -> SqlEndpoint:
    """The endpoint of one ``NAME.sql`` file (its database: ``NAME``)."""
    name = os.path.splitext(os.path.basename(path))[0]
    found = SqlEndpoint(path, name)
    database = settings.databases.get(name)
    if database is None:
        found.problems.append(f"{path}: no database {name!r} in [sql] databases; "
                              "its statements are not served")
        return found
    try:
        statements, found.problems = parse_file(path)
    except (OSError, UnicodeDecodeError, StatementError) as exc:
        found.problems.append(f"{path}: {exc}")
        return found
    found.endpoint = build(name, statements, database, settings)
    return found


def sql_files(folder: str) -> list[str]:
    """The ``*.sql`` files of a folder (not hidden, not starting with ``_``); OSError if unreadable."""
    paths = [os.path.abspath(os.path.join(folder, n)) for n in sorted(os.listdir(folder))
             if n.endswith(".sql") and not n.startswith(("_", "."))]
    return [path for path in paths if os.path.isfile(path)]


def load(conf: cfg.ConfigOpts) -> tuple[list[SqlEndpoint], list[str]]:
    """Every ``.sql`` file of ``[sql] directories`` as an endpoint; ``problems`` not tied to a file.

    Pools of databases no longer configured are closed; the others keep their connections.
    """
    settings, problems = settings_from(conf)
    _remember(settings)
    loaded: list[SqlEndpoint] = []
    for folder in conf.sql.directories:
        folder = opts.config_relative(conf, folder, "directories", "sql")
        try:
            paths = sql_files(folder)
        except OSError as exc:
            reason = "does not exist" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
            problems.append(f"SQL folder {folder} ([sql] directories) {reason}; "
                            "no SQL methods loaded from it")
            continue
        loaded += [load_file(path, settings) for path in paths]
    POOLS.keep_only({d.url.render_as_string(hide_password=False) for d in settings.databases.values()})
    return loaded, problems


_last: list[SqlSettings] = []


def _remember(settings: SqlSettings) -> None:
    _last[:] = [settings]


def rebuild(path: str) -> Any:
    """Re-create a file's endpoint with this process's last loaded settings (another process's origin)."""
    if not _last:
        raise LookupError("no [sql] settings loaded in this process")
    found = load_file(path, _last[0])
    if found.endpoint is None:
        raise LookupError("; ".join(found.problems))
    return found.endpoint


def check_file(path: str) -> None:
    """Raise :class:`StatementError` if a ``.sql`` file has a statement sbusr cannot serve."""
    _statements, problems = parse_file(path)
    if problems:
        raise StatementError("; ".join(problems))
