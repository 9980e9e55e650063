"""SQL methods end to end: .sql files on a real PostgreSQL and SQLite, called through a real bus as
an IPSC flow calls them, by a real sbusr-server in both execution modes with the same assertions.

The PostgreSQL cluster (tests/helpers/postgres.py) is Debian's server in a temporary folder on a
free port, one per test process (so one per pytest-xdist worker), started once and stopped at the end.
"""

from __future__ import annotations

import decimal
import textwrap
from pathlib import Path

import pytest

from sbusr.testing import Stack
from sbusr.testing.waiting import wait_for
from tests.helpers.debian import INSTALL_TIMEOUT
from tests.helpers.postgres import PostgresCluster, find_or_install_postgres

#: the first test's set-up may install the database server with apt-get (bounded by INSTALL_TIMEOUT)
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 300)

SCHEMA = """
create table if not exists customers (phone text primary key, name text not null, vip boolean,
                                      balance numeric(12, 2), since date);
create table if not exists calls (id serial primary key, phone text not null, seconds int not null);
create or replace function rich_customers(min_balance numeric)
    returns table (phone text, balance numeric) language sql
    as $$ select phone, balance from customers where balance >= min_balance order by phone $$;
create or replace procedure log_call_checked(p_phone text, p_seconds int) language plpgsql as $$
begin
    insert into calls (phone, seconds) values (p_phone, p_seconds);
    if p_seconds < 0 then
        raise exception 'seconds must not be negative' using errcode = '22023';
    end if;
end $$;
"""

PG_SQL = textwrap.dedent("""\
    -- name: lookup_caller^
    -- The caller's name, VIP flag, balance and customer-since date.
    select name, vip, balance, since from customers where phone = :phone;

    -- name: add_customer!
    insert into customers (phone, name, vip, balance, since)
    values (:phone, :name, :vip, :balance, :since::date);

    -- name: customers_like
    select phone, name from customers where phone like :prefix || '%' order by phone;

    -- name: balance$
    select balance from customers where phone = :phone;

    -- name: log_call!
    insert into calls (phone, seconds) values (:phone, :seconds);

    -- name: count_calls$
    select count(*) from calls where phone = :phone;

    -- name: log_then_fail!
    -- Inserts a call, then divides by zero in the same statement.
    with added as (insert into calls (phone, seconds) values (:phone, 1) returning seconds)
    select seconds / 0 from added;

    -- name: log_call_checked!
    call log_call_checked(:phone, :seconds);

    -- name: rich
    select * from rich_customers(:min_balance);

    -- name: sleep$
    -- timeout: 1
    select 'sbusr-sleep-marker', pg_sleep(:seconds);

    -- name: big
    select repeat('x', 100) as x from generate_series(1, 400);
    """)

LITE_SQL = textwrap.dedent("""\
    -- name: setup!
    create table if not exists notes (id integer primary key, body text not null);

    -- name: add!
    insert into notes (body) values (:body);

    -- name: notes
    select id, body from notes order by id;

    -- name: version$
    select 'v1';
    """)


@pytest.fixture(scope="session")
def postgres():
    bin_dir, why = find_or_install_postgres()
    if bin_dir is None:
        pytest.fail(f"PostgreSQL is needed and cannot be installed here: {why}")
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        with cluster.connect() as conn:
            conn.execute(SCHEMA)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module", params=["thread", "process"])
def stack(request, postgres, tmp_path_factory, on_session_bus):
    mode = request.param
    work = tmp_path_factory.mktemp(f"sql-{mode}")
    sql = work / "sql"
    sql.mkdir()
    (sql / "pg.sql").write_text(PG_SQL)
    (sql / "lite.sql").write_text(LITE_SQL)
    config = {
        "sql": {"databases": [f"pg:{postgres.url}", f"lite:sqlite:///{work / 'lite.db'}"],
                "directories": [sql]},
        "execution": {"mode": mode, "workers": 2, "call_timeout": 20},
        "endpoints": {"watch": True},
    }
    with Stack([], config, workdir=work, **on_session_bus) as running:
        running.mode = mode
        running.sql = sql
        yield running


def call(stack, method, params=None):
    return stack.ipsc.call(method, params, timeout=60.0)


def result(stack, method, params=None):
    reply = call(stack, method, params)
    assert "result" in reply, reply
    return reply["result"]


def error(stack, method, params=None):
    reply = call(stack, method, params)
    assert "error" in reply, reply
    return reply["error"]


def test_each_suffix_and_both_param_styles(stack):
    phone = f"{stack.mode}-100"
    assert result(stack, "pg.add_customer", {"phone": phone, "name": "Li Lei", "vip": True,
                                             "balance": "1234.50", "since": "2020-02-29"}) == 1
    # positional params: in the order the names first appear in the statement
    assert result(stack, "pg.add_customer", [f"{stack.mode}-101", "Han Meimei", False, 0, "2021-01-01"]) == 1
    assert result(stack, "pg.lookup_caller", {"phone": phone}) == {
        "name": "Li Lei", "vip": True, "balance": 1234.5, "since": "2020-02-29"}
    assert result(stack, "pg.lookup_caller", ["nobody"]) is None
    assert result(stack, "pg.balance", [phone]) == 1234.5
    assert result(stack, "pg.balance", ["nobody"]) is None
    assert result(stack, "pg.customers_like", [f"{stack.mode}-10"]) == [
        {"phone": phone, "name": "Li Lei"}, {"phone": f"{stack.mode}-101", "name": "Han Meimei"}]
    assert result(stack, "pg.customers_like", ["nobody"]) == []
    hostile = "O'Brien %(name)s %s :phone'); drop table customers; --"
    assert result(stack, "pg.add_customer", [f"{stack.mode}-102", hostile, None, None, None]) == 1
    assert result(stack, "pg.lookup_caller", [f"{stack.mode}-102"])["name"] == hostile  # bound, not SQL

    assert result(stack, "lite.setup") in (-1, 0)
    assert result(stack, "lite.add", {"body": f"{stack.mode} 50% done"}) == 1
    notes = result(stack, "lite.notes")
    assert {"id": notes[-1]["id"], "body": f"{stack.mode} 50% done"} == notes[-1]
    assert result(stack, "lite.version") == "v1"


def test_missing_unknown_and_extra_params_are_invalid_params(stack):
    for params in ({}, {"phone": "1", "seconds": 2, "extra": 3}, {"seconds": 2}, ["1", 2, 3], ["1"]):
        assert error(stack, "pg.log_call", params)["code"] == -32602, params
    assert error(stack, "pg.log_call", {"phone": {"nested": 1}, "seconds": 1})["code"] == -32602
    assert error(stack, "pg.no_such_statement", [])["code"] == -32601


def test_a_failed_call_is_rolled_back_and_answers_the_database_error(stack, postgres):
    phone = f"{stack.mode}-rollback"
    failed = error(stack, "pg.log_then_fail", [phone])
    assert failed["code"] == -32050
    assert failed["message"].startswith("database error")
    assert failed["data"]["sqlstate"] == "22012"  # division_by_zero
    assert "division by zero" in failed["data"]["message"]
    assert result(stack, "pg.count_calls", [phone]) == 0  # the insert before it was rolled back

    duplicate = {"phone": f"{stack.mode}-dup", "name": "x", "vip": False, "balance": 0, "since": "2020-01-01"}
    assert result(stack, "pg.add_customer", duplicate) == 1
    with postgres.connect() as conn:  # committed: another session sees it
        row = conn.execute("select name from customers where phone = %s", (duplicate["phone"],)).fetchone()
    assert row == ("x",)
    assert error(stack, "pg.add_customer", duplicate)["data"]["sqlstate"] == "23505"  # unique_violation


def test_stored_function_and_procedure(stack):
    phone = f"{stack.mode}-proc"
    result(stack, "pg.log_call_checked", {"phone": phone, "seconds": 30})
    assert result(stack, "pg.count_calls", [phone]) == 1
    failed = error(stack, "pg.log_call_checked", {"phone": phone, "seconds": -1})
    assert failed["code"] == -32050 and failed["data"]["sqlstate"] == "22023"
    assert "must not be negative" in failed["message"]
    assert result(stack, "pg.count_calls", [phone]) == 1  # the procedure's insert was rolled back

    rich_phone = f"{stack.mode}-rich"
    result(stack, "pg.add_customer", [rich_phone, "Rich", True, "1000000.01", "2019-05-05"])
    rows = result(stack, "pg.rich", {"min_balance": 999999})
    assert {"phone": rich_phone, "balance": 1000000.01} in rows


def test_numerics_arrive_with_exactly_their_digits(stack):
    phone = f"{stack.mode}-exact"
    result(stack, "pg.add_customer", [phone, "Exact", False, "1000000.10", "2020-01-02"])
    unit, client = stack.server_address
    reply = stack.ipsc.call_rpc(unit, client, {"jsonrpc": "2.0", "id": "exact", "method": "pg.rich",
                                               "params": {"min_balance": 1000000}},
                                timeout=60.0, parse_float=decimal.Decimal)
    balances = {row["phone"]: row["balance"] for row in reply["result"]}
    assert str(balances[phone]) == "1000000.10"  # numeric(12, 2): both digits, no float on the way


def test_query_past_its_limit_gets_32001_and_stops_in_the_database(stack, postgres):
    failed = error(stack, "pg.sleep", [600])  # without the database's own limit it would sleep on
    assert failed["code"] == -32001
    assert failed["data"]["timeout"] == 1

    def still_running():
        with postgres.connect() as conn:
            return conn.execute("select count(*) from pg_stat_activity where state = 'active' "
                                "and query like '%%sbusr-sleep-marker%%' and pid <> pg_backend_pid()"
                                ).fetchone()[0]

    wait_for(lambda: still_running() == 0, "the timed-out statement to leave pg_stat_activity", timeout=60)
    assert result(stack, "pg.count_calls", ["nobody"]) == 0  # the server serves on


def test_result_too_big_for_a_reply_is_32603(stack):
    assert error(stack, "pg.big")["code"] == -32603


def test_database_restart_gives_32051_then_calls_succeed_again_without_a_restart(stack, postgres):
    phone = f"{stack.mode}-restart"
    assert result(stack, "pg.count_calls", [phone]) == 0  # pooled connections exist
    postgres.stop()
    try:
        down = error(stack, "pg.count_calls", [phone])
        assert down["code"] == -32051, down
        assert down["message"].startswith("database unavailable")
        assert down["data"]["database"] == "pg"
        assert result(stack, "lite.version") == "v1"  # other databases are unaffected
    finally:
        postgres.start()
    # the first calls after the database is back succeed: dead pooled connections are replaced
    assert [result(stack, "pg.count_calls", [phone]) for _ in range(4)] == [0] * 4
    log = stack.server.output()
    assert "database pg is unavailable" in log
    assert "database pg is available again" in log


def test_sql_methods_are_listed_and_counted_like_any_other(stack):
    methods = result(stack, "sys.methods")
    assert {"pg.lookup_caller", "pg.add_customer", "lite.notes", "sys.ping"} <= set(methods)
    result(stack, "lite.version")
    assert error(stack, "pg.log_then_fail", ["stats"])["code"] == -32050
    by_method = {m["method"]: m for m in result(stack, "sys.stats")["methods"]}  # the status page's figures
    assert by_method["lite.version"]["calls"] >= 1
    assert by_method["pg.log_then_fail"]["minute"]["errors"].get("-32050", 0) >= 1


def _save(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text)
    temp.replace(path)


def test_reload_picks_up_changed_sql_files(stack):
    """In an order that leaves no reload pending when the next save comes (a reload reads the files
    as they are when it runs, whichever save started it)."""
    lite = stack.sql / "lite.sql"
    text = lite.read_text()
    # [endpoints] watch: a saved file with a statement sbusr cannot serve changes nothing
    script = "\n-- name: script#\ncreate table t (a int);\n"
    broken = text.replace("select 'v1';", "select 'broken';") + script
    _save(lite, broken)
    wait_for(lambda: "lite.sql was saved but does not parse" in stack.server.output(), "the refused save")
    assert result(stack, "lite.version") == "v1"

    # a good save is served without a signal (files are saved in one step, as editors do)
    _save(lite, text.replace("select 'v1';", "select 'v2';") + "\n-- name: added$\nselect 40 + :n;\n")
    wait_for(lambda: call(stack, "lite.version").get("result") == "v2", "the saved .sql file to be served")
    assert result(stack, "lite.added", {"n": 2}) == 42

    # sys.reload (what SIGHUP and /sys/reset run): the next calls see the file as it is now
    _save(lite, text.replace("select 'v1';", "select 'v3';"))
    result(stack, "sys.reload")
    assert [result(stack, "lite.version") for _ in range(4)] == ["v3"] * 4
    assert error(stack, "lite.added", [1])["code"] == -32601
