"""A statement's ``:name`` params written in the DB-API driver's own paramstyle.

aiosql finds the ``:name`` references (outside quoted strings and ``::`` casts); here they become
the driver's placeholders and the values always travel separately, bound by the driver.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiosql.utils import VAR_REF

#: driver dialects whose DB-API module says "qmark" but also binds :name from a dict
_NAMED_TOO = frozenset({"sqlite"})


def names_in_order(sql: str) -> list[str]:
    """Param names in the order they first appear (quoted text and numbers left out)."""
    names: list[str] = []
    for match in VAR_REF.finditer(sql):
        name = match.group("var_name")
        if name and not name.isdigit() and name not in names:
            names.append(name)
    return names


def _substitute(sql: str, placeholder: Callable[[str], str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group("var_name")
        if not name or name.isdigit():
            return match.group(0)
        return f"{match.group('lead')}{placeholder(name)}"

    return VAR_REF.sub(replace, sql)


class Prepared:
    """A statement's text for one driver and how to turn named values into its params."""

    def __init__(self, sql: str, paramstyle: str, dialect: str) -> None:
        order: list[str] = []
        if dialect in _NAMED_TOO or paramstyle == "named":
            self.sql = sql
            self._shape: Callable[[dict[str, Any]], Any] = dict
            return
        if paramstyle in ("pyformat", "format"):
            sql = sql.replace("%", "%%")  # a literal % is an escape for these drivers
        if paramstyle == "pyformat":
            self.sql = _substitute(sql, lambda name: f"%({name})s")
            self._shape = dict
            return
        if paramstyle == "numeric":
            names = names_in_order(sql)
            self.sql = _substitute(sql, lambda name: f":{names.index(name) + 1}")
            self._shape = lambda values: [values[n] for n in names]
            return

        def positional(name: str) -> str:
            order.append(name)
            return "%s" if paramstyle == "format" else "?"

        self.sql = _substitute(sql, positional)
        self._shape = lambda values: [values[n] for n in order]

    def params(self, values: dict[str, Any]) -> Any:
        """The params object to pass to ``cursor.execute`` (never None: drivers then skip escapes)."""
        return self._shape(values)
