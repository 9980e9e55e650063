"""``[sql] databases``: ``NAME:URL`` entries, with the driver sbusr ships filled into each URL."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

#: a database name is a JSON-RPC namespace (the file NAME.sql) and must stay one dotted part
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: namespaces sbusr keeps for itself
RESERVED = frozenset({"sys", "sbusr", "rpc"})
#: the DB-API driver used when a URL names only its dialect
DEFAULT_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}


class DatabaseConfigError(ValueError):
    """An ``[sql] databases`` entry that cannot be used (the message says which and why)."""


@dataclass(frozen=True)
class Database:
    name: str
    url: URL

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    def __str__(self) -> str:
        return f"{self.name} ({self.url.render_as_string(hide_password=True)})"


def with_driver(url: URL) -> URL:
    """``postgresql://`` -> ``postgresql+psycopg://`` and so on; explicit drivers are kept."""
    if "+" in url.drivername:
        return url
    driver = DEFAULT_DRIVERS.get(url.drivername)
    return url.set(drivername=f"{url.drivername}+{driver}") if driver else url


def parse_entry(entry: str) -> Database:
    """One ``NAME:URL`` entry; raises :class:`DatabaseConfigError`."""
    name, sep, raw_url = entry.strip().partition(":")
    name = name.strip()
    if not sep or not raw_url.strip():
        raise DatabaseConfigError(f"[sql] databases entry {name!r} is not NAME:URL")
    if not NAME.match(name):
        raise DatabaseConfigError(f"[sql] databases name {name!r} must be letters, digits and _ "
                                  "(it is a JSON-RPC namespace)")
    if name in RESERVED:
        raise DatabaseConfigError(f"[sql] databases name {name!r} is reserved for sbusr's own methods")
    try:  # the messages leave out the URL: it may hold a password
        url = with_driver(make_url(raw_url.strip()))
    except ArgumentError:
        raise DatabaseConfigError(f"[sql] databases {name}: not a database URL "
                                  "(dialect[+driver]://user:password@host:port/database)") from None
    try:
        dialect = url.get_dialect()
    except Exception:  # NoSuchModuleError and the like
        raise DatabaseConfigError(f"[sql] databases {name}: no SQLAlchemy dialect "
                                  f"{url.drivername!r}") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise DatabaseConfigError(f"[sql] databases {name}: the driver of {url.drivername} is not installed "
                                  f"({exc})") from None
    return Database(name, url)


def parse(entries: list[str]) -> tuple[dict[str, Database], list[str]]:
    """``(name -> Database, problems)``; a bad or repeated entry is a problem and left out."""
    found: dict[str, Database] = {}
    problems: list[str] = []
    for entry in entries:
        if not entry.strip():
            continue
        try:
            database = parse_entry(entry)
        except DatabaseConfigError as exc:
            problems.append(str(exc))
            continue
        if database.name in found:
            problems.append(f"[sql] databases names {database.name} twice; the first is used")
            continue
        found[database.name] = database
    return found, problems
