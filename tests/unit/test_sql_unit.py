"""SQL methods, piece by piece: parsing .sql files, params in each driver's style, ``[sql] databases``,
the generated endpoints and one call's transaction, time limit and errors, on SQLite in this process.
(PostgreSQL and the whole path through a real bus: tests/test_sql_e2e.py.)"""

from __future__ import annotations

import inspect
import os
import textwrap

import pytest
from oslo_config import cfg
from oslo_messaging.rpc import dispatcher as rpc_dispatcher

from sbusr import config, dispatch, opts
from sbusr.execution.limits import LIMITS_ATTR
from sbusr.jsonrpc.errors import CALL_TIMEOUT, INVALID_PARAMS, RpcError
from sbusr.jsonrpc.protocol import POSITIONAL_KEY
from sbusr.server.reload_on_save import _is_endpoint_file
from sbusr.sql import databases, errors, statements
from sbusr.sql.paramstyle import Prepared, names_in_order
from sbusr.sql.pools import POOLS
from sbusr.sql.statements import Shape, StatementError

POSITIONAL = POSITIONAL_KEY

FILE = textwrap.dedent("""\
    -- name: lookup_caller^
    -- The caller's name and VIP flag.
    -- timeout: 2.5
    select name, vip from customers where phone = :phone and :phone <> '' and note = ':not_a_param';

    -- name: log-call!
    insert into calls (phone, seconds) values (:phone, :seconds::int);

    -- name: everyone
    select * from customers;

    -- name: how_many$
    select count(*) from customers;
    """)


# --------------------------------------------------------------------------- parsing

def test_statements_have_shapes_params_in_order_docs_and_limits():
    found, problems = statements.parse(FILE, "crm.sql")
    assert problems == []
    by_name = {s.name: s for s in found}
    assert [s.name for s in found] == ["lookup_caller", "log_call", "everyone", "how_many"]
    lookup = by_name["lookup_caller"]
    assert (lookup.shape, lookup.params, lookup.doc, lookup.timeout) == (
        Shape.ROW, ("phone",), "The caller's name and VIP flag.", 2.5)
    assert (by_name["log_call"].shape, by_name["log_call"].params) == (Shape.ROWCOUNT, ("phone", "seconds"))
    assert by_name["everyone"].shape is Shape.ROWS and by_name["everyone"].timeout is None
    assert by_name["how_many"].shape is Shape.VALUE and by_name["how_many"].params == ()


@pytest.mark.parametrize("text, needle", [
    ("-- name: s#\ncreate table t (a int);\n", "cannot be a JSON-RPC method"),
    ("-- name: m*!\ninsert into t values (:a);\n", "cannot be a JSON-RPC method"),
    ("-- name: s$\n-- timeout: soon\nselect 1;\n", "must be seconds"),
    ("-- name: s$\n-- timeout: -1\nselect 1;\n", "must be seconds"),
    ("-- name: s$\nselect :_private;\n", "cannot be a JSON-RPC param name"),
    ("-- name: s$\nselect 1;\n-- name: s$\nselect 2;\n", "a second statement"),
    ("-- name: __init__$\nselect 1;\n", "cannot be a method"),
    ("-- name: target$\nselect 1;\n", "cannot be a method"),
])
def test_statements_sbusr_cannot_serve_are_reported_and_the_rest_kept(text, needle):
    found, problems = statements.parse(text + "-- name: fine$\nselect 1;\n", "x.sql")
    assert "fine" in [s.name for s in found]
    assert len(problems) == 1 and needle in problems[0] and "x.sql" in problems[0]


@pytest.mark.parametrize("text", ["-- name: 1bad name\nselect 1;\n", "-- name: s$\nselect :from;\n"])
def test_a_file_aiosql_cannot_parse_is_one_error(text):
    with pytest.raises(StatementError, match=r"bad\.sql"):
        statements.parse(text, "bad.sql")


# --------------------------------------------------------------------------- paramstyle

def test_params_become_the_drivers_placeholders_and_percent_signs_stay_literal():
    sql = "select * from t where a = :a and b like 'x%' and c = :b and d = :a and e = '::x' and f::int = 1"
    assert names_in_order(sql) == ["a", "b"]
    pyformat = Prepared(sql, "pyformat", "postgresql")
    assert pyformat.sql == ("select * from t where a = %(a)s and b like 'x%%' and c = %(b)s and d = %(a)s "
                            "and e = '::x' and f::int = 1")
    assert pyformat.params({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    qmark = Prepared(sql, "qmark", "mssql")
    assert qmark.sql.count("?") == 3 and qmark.params({"a": 1, "b": 2}) == [1, 2, 1]
    numeric = Prepared(sql, "numeric", "other")
    assert ":1" in numeric.sql and ":2" in numeric.sql and numeric.params({"a": 1, "b": 2}) == [1, 2]
    assert Prepared(sql, "qmark", "sqlite").sql == sql  # sqlite3 binds :name from a dict
    assert Prepared("select 1 % 2", "pyformat", "mysql").params({}) == {}  # never None: % is unescaped


# --------------------------------------------------------------------------- [sql] databases

def test_databases_get_their_drivers_and_bad_entries_are_reported():
    found, problems = databases.parse([
        "crm:postgresql://ivr:secret@db.example/crm", "shop:mysql://ivr@db/shop", "m:mariadb://u@h/d",
        "local:sqlite:////var/lib/sbusr/local.db", "odbc:mssql+pymssql://u@h/d",
        "sys:sqlite://", "bad name:sqlite://", "nourl", "crm:sqlite://", "x:not a url",
        "y:nosuchdb://u:pw@h/d", "z:mssql+nosuchdriver://u:pw@h/d"])
    assert {n: d.url.drivername for n, d in found.items()} == {
        "crm": "postgresql+psycopg", "shop": "mysql+pymysql", "m": "mariadb+pymysql",
        "local": "sqlite"}
    assert "secret" not in str(found["crm"])
    assert len(problems) == 8  # pymssql is not installed: that one too
    assert not any("pw" in p for p in problems)
    assert any("reserved" in p for p in problems) and any("twice" in p for p in problems)


def test_bad_database_entries_are_configuration_problems(tmp_path):
    conf = _conf(tmp_path, ["crm:postgresql://ivr:secret@db/crm", "sys:sqlite://", "odd:nosuchdb://x"])
    found = config.problems(conf)
    assert len(found) == 2 and any("reserved" in p for p in found) and any("nosuchdb" in p for p in found)
    assert not any("secret" in p for p in found)


# --------------------------------------------------------------------------- endpoints on SQLite

LITE = textwrap.dedent("""\
    -- name: setup!
    create table if not exists notes (id integer primary key, body text not null unique, n numeric);

    -- name: add!
    -- Adds a note.
    insert into notes (body, n) values (:body, :n);

    -- name: add_two!
    insert into notes (body, n) select :body, 1 union all select :body || '!', 2;

    -- name: notes
    select id, body, n from notes order by id;

    -- name: note^
    select body, n from notes where body = :body;

    -- name: count$
    select count(*) from notes;

    -- name: forever$
    -- timeout: 0.3
    with recursive r(i) as (select 1 union all select i + 1 from r) select count(*) from r;
    """)


def _conf(tmp_path, databases_=None, files=None):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    folder = tmp_path / "sql"
    folder.mkdir(exist_ok=True)
    for name, text in (files or {"lite": LITE}).items():
        (folder / f"{name}.sql").write_text(text)
    conf.set_override("databases", databases_ or [f"lite:sqlite:///{tmp_path / 'lite.db'}"], "sql")
    conf.set_override("directories", [str(folder)], "sql")
    conf.set_override("entry_points", False, "endpoints")
    return conf


def _adapter(registry, namespace="lite"):
    return next(a for a in registry.adapters if a.target.namespace == namespace)


def _raised(fn, *args, **kwargs) -> RpcError:
    with pytest.raises(rpc_dispatcher.ExpectedException) as caught:
        fn({}, *args, **kwargs)
    return caught.value.exc_info[1]


def test_each_file_is_an_endpoint_with_signatures_docs_and_limits(tmp_path):
    registry = dispatch.load_endpoints(_conf(tmp_path))
    assert registry.errors == []
    assert {m for m in registry.methods() if m.startswith("lite.")} == {
        "lite.setup", "lite.add", "lite.add_two", "lite.notes", "lite.note", "lite.count", "lite.forever"}
    adapter = _adapter(registry)
    assert adapter.origin.kind == "sql"
    add = adapter.endpoint.add
    assert list(inspect.signature(add).parameters)[1:] == ["body", "n"]
    assert add.__doc__ == "Adds a note."
    assert getattr(adapter.endpoint.forever, LIMITS_ATTR).timeout == 0.3
    assert getattr(add, LIMITS_ATTR, None) is None  # [execution] call_timeout applies
    assert dispatch.create_endpoint(adapter.origin).add.__doc__ == "Adds a note."  # re-created elsewhere


def test_calls_answer_by_suffix_commit_and_roll_back(tmp_path):
    adapter = _adapter(dispatch.load_endpoints(_conf(tmp_path)))
    adapter.setup({})
    assert adapter.add({}, body="a", n="1.5") == 1
    assert adapter.add({}, **{POSITIONAL: ["b", 2]}) == 1
    assert adapter.notes({}) == [{"id": 1, "body": "a", "n": 1.5}, {"id": 2, "body": "b", "n": 2}]
    assert adapter.note({}, body="b") == {"body": "b", "n": 2}
    assert adapter.note({}, body="zzz") is None
    assert adapter.count({}) == 2

    duplicate = _raised(adapter.add_two, body="a")  # its first row collides: the whole call is undone
    assert duplicate.code == errors.DATABASE_ERROR and duplicate.message.startswith("database error")
    assert duplicate.data["code"].startswith("SQLITE_CONSTRAINT") and duplicate.data["database"] == "lite"
    assert adapter.count({}) == 2
    assert adapter.add_two({}, body="c") == 2
    assert adapter.count({}) == 4


def test_values_are_bound_never_part_of_the_sql(tmp_path):
    adapter = _adapter(dispatch.load_endpoints(_conf(tmp_path)))
    adapter.setup({})
    hostile = "x', 1); drop table notes; --"
    assert adapter.add({}, body=hostile, n=":n %s %(n)s") == 1
    assert adapter.note({}, body=hostile) == {"body": hostile, "n": ":n %s %(n)s"}
    assert adapter.count({}) == 1  # the table is still there


@pytest.mark.parametrize("kwargs", [{}, {"body": "x"}, {"body": "x", "n": 1, "other": 2},
                                    {POSITIONAL: ["x", 1, 2]}, {"body": {"a": 1}, "n": 1}])
def test_missing_unknown_extra_or_unbindable_params_are_invalid_params(tmp_path, kwargs):
    adapter = _adapter(dispatch.load_endpoints(_conf(tmp_path)))
    assert _raised(adapter.add, **kwargs).code == INVALID_PARAMS


def test_sqlite_statement_past_its_limit_is_stopped_with_32001(tmp_path):
    adapter = _adapter(dispatch.load_endpoints(_conf(tmp_path)))
    error = _raised(adapter.forever)
    assert (error.code, error.data) == (CALL_TIMEOUT, {"timeout": 0.3})
    adapter.setup({})
    assert adapter.count({}) == 0  # the connection is fine afterwards


def test_unreachable_database_is_32051_and_a_file_without_database_a_load_error(tmp_path):
    conf = _conf(tmp_path, [f"lite:sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"],
                 {"lite": LITE, "orphan": "-- name: x$\nselect 1;\n"})
    registry = dispatch.load_endpoints(conf)
    assert [e.source.endswith("orphan.sql") for e in registry.errors] == [True]
    assert "no database 'orphan'" in registry.errors[0].error
    error = _raised(_adapter(registry).count)
    assert error.code == errors.DATABASE_UNAVAILABLE and error.message.startswith("database unavailable")


def test_missing_sql_folder_and_bad_database_entries_are_load_errors(tmp_path):
    conf = _conf(tmp_path, ["nourl"])
    conf.set_override("directories", [str(tmp_path / "missing")], "sql")
    registry = dispatch.load_endpoints(conf)
    assert len(registry.errors) == 2
    assert any("does not exist" in e.error for e in registry.errors)


def test_saved_sql_files_are_checked_before_a_reload(tmp_path):
    good, bad = tmp_path / "good.sql", tmp_path / "bad.sql"
    good.write_text("-- name: x$\nselect 1;\n")
    bad.write_text("-- name: x#\ncreate table t (a int);\n")
    dispatch.check_source(str(good))
    with pytest.raises(StatementError):
        dispatch.check_source(str(bad))
    assert _is_endpoint_file(str(good), {str(tmp_path)})


def test_a_forked_child_does_not_inherit_the_parents_connections(tmp_path):
    adapter = _adapter(dispatch.load_endpoints(_conf(tmp_path)))
    adapter.setup({})  # the pool now holds an open connection
    assert POOLS._engines
    pid = os.fork()
    if pid == 0:  # the child: no pools until it makes its own
        os._exit(0 if not POOLS._engines else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert adapter.count({}) == 0  # the parent's pool is untouched
