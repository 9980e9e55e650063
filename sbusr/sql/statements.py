"""A ``.sql`` file in aiosql's format, parsed by aiosql into the statements sbusr serves.

``-- name: lookup_caller^`` starts a statement; the comment lines under it are its docstring,
except ``-- timeout: S``, its time limit. The suffix says what a call answers (:class:`Shape`).
"""

from __future__ import annotations

import enum
import keyword
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from aiosql.query_loader import QueryLoader
from aiosql.types import SQLOperationType
from aiosql.utils import SQLLoadException, SQLParseException

from sbusr.sql.paramstyle import names_in_order

_TIMEOUT_LINE = re.compile(r"^\s*timeout\s*:\s*(?P<value>\S*)\s*$", re.IGNORECASE)


class Shape(enum.Enum):
    """What a call of the statement answers."""

    ROWS = ""       # no suffix: a list of objects
    ROW = "^"       # one object, or null when there is no row
    VALUE = "$"     # the first column of the first row, or null
    ROWCOUNT = "!"  # the number of rows affected


_SHAPES = {
    SQLOperationType.SELECT: Shape.ROWS,
    SQLOperationType.SELECT_ONE: Shape.ROW,
    SQLOperationType.INSERT_RETURNING: Shape.ROW,  # aiosql's "<!": the returned row
    SQLOperationType.SELECT_VALUE: Shape.VALUE,
    SQLOperationType.INSERT_UPDATE_DELETE: Shape.ROWCOUNT,
}


class StatementError(ValueError):
    """A ``.sql`` file or statement sbusr cannot serve (the message says where and why)."""


@dataclass(frozen=True)
class Statement:
    name: str
    shape: Shape
    sql: str  # with :name params, as written
    params: tuple[str, ...]  # in the order they first appear
    doc: str
    timeout: float | None  # from "-- timeout: S"; None = the configured call_timeout
    line: int


class _NamedStyle:
    """aiosql driver adapter for parsing only: the SQL keeps its ``:name`` params."""

    def process_sql(self, _query_name: str, _op_type: Any, sql: str) -> str:
        return sql


def _split_doc(doc: str, where: str) -> tuple[str, float | None]:
    lines, timeout = [], None
    for line in doc.splitlines():
        match = _TIMEOUT_LINE.match(line)
        if match is None:
            lines.append(line)
            continue
        try:
            timeout = float(match.group("value"))
        except ValueError:
            timeout = -1.0
        if not math.isfinite(timeout) or timeout < 0:
            raise StatementError(f"{where}: '-- timeout: {match.group('value')}' must be seconds >= 0 "
                                 "(0 = no limit)")
    return "\n".join(lines).strip(), timeout


def parse(text: str, source: str = "<string>") -> tuple[list[Statement], list[str]]:
    """``(statements, problems)`` of a file's text; a statement that cannot be served is a problem."""
    loader = QueryLoader(_NamedStyle(), None, attribute=None, mandatory_parameters=False)  # type: ignore[arg-type]
    try:
        data = loader.load_query_data_from_sql(text, [], source)
    except (SQLParseException, SQLLoadException, ValueError) as exc:  # ValueError: a param name
        raise StatementError(f"{source}: {exc}") from None
    statements: list[Statement] = []
    problems: list[str] = []
    seen: set[str] = set()
    for datum in data:
        line = datum.floc[1] if datum.floc else 0
        where = f"{source}:{line} {datum.query_name}"
        shape = _SHAPES.get(datum.operation_type)
        try:
            if shape is None:
                raise StatementError(f"{where}: the suffix of this statement (a script or executemany) "
                                     "cannot be a JSON-RPC method; use ^, $, ! or none")
            if datum.query_name.startswith("_") or datum.query_name == "target":
                raise StatementError(f"{where}: this name cannot be a method (private, or the endpoint's "
                                     "target)")
            if datum.query_name in seen:
                raise StatementError(f"{where}: a second statement of this name; the first is used")
            doc, timeout = _split_doc(datum.doc_comments, where)
            params = tuple(names_in_order(datum.sql))
            for name in params:
                if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
                    raise StatementError(f"{where}: param :{name} cannot be a JSON-RPC param name")
        except StatementError as exc:
            problems.append(str(exc))
            continue
        seen.add(datum.query_name)
        statements.append(Statement(datum.query_name, shape, datum.sql, params, doc, timeout, line))
    return statements, problems


def parse_file(path: str) -> tuple[list[Statement], list[str]]:
    """Parse a ``.sql`` file (UTF-8); raises OSError or :class:`StatementError` for the whole file."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return parse(text, os.path.basename(path))
