"""SQL methods on MariaDB (Debian's mariadb-server through PyMySQL), through a real bus in both
execution modes: results by suffix, params, errors, the database's own time limit and a restart.

The test set-up installs ``mariadb-server`` when it is missing (as root with apt, about 25 MB, as it
does PostgreSQL and Chromium) and fails, rather than skips, where it cannot: a skipped database
test would hide a broken MySQL path.
"""

from __future__ import annotations

import textwrap

import pytest

from sbusr.testing import Stack
from sbusr.testing.waiting import wait_for
from tests.helpers.debian import INSTALL_TIMEOUT
from tests.helpers.mariadb import MariaDbServer, find_or_install_mariadb

#: the first test's set-up may install the database server with apt-get (bounded by INSTALL_TIMEOUT)
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 300)

SCHEMA = [
    "create table if not exists customers (phone varchar(32) primary key, name varchar(100) not null, "
    "balance decimal(12, 2), since date)",
]

SQL = textwrap.dedent("""\
    -- name: add_customer!
    insert into customers (phone, name, balance, since) values (:phone, :name, :balance, :since);

    -- name: lookup^
    -- One customer.
    select name, balance, since from customers where phone = :phone;

    -- name: like_phone
    select phone from customers where phone like concat(:prefix, '%') order by phone;

    -- name: how_many$
    select count(*) from customers where phone like concat(:prefix, '%');

    -- name: sleep$
    -- timeout: 1
    select 'sbusr-sleep-marker', sleep(:seconds);
    """)


@pytest.fixture(scope="session")
def mariadb():
    mariadbd, why = find_or_install_mariadb()
    if mariadbd is None:
        pytest.fail(f"MariaDB is needed and cannot be installed here: {why}")
    server = MariaDbServer(mariadbd)
    try:
        server.start()
        with server.connect() as conn, conn.cursor() as cursor:
            for statement in SCHEMA:
                cursor.execute(statement)
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module", params=["thread", "process"])
def stack(request, mariadb, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"mariadb-{request.param}")
    (work / "shop.sql").write_text(SQL)
    config = {"sql": {"databases": [f"shop:{mariadb.url}"], "directories": [work]},
              "execution": {"mode": request.param, "workers": 2, "call_timeout": 20}}
    with Stack([], config, workdir=work) as running:
        running.mode = request.param
        yield running


def reply(stack, method, params=None):
    return stack.ipsc.call(method, params, timeout=60.0)


def test_results_params_and_errors(stack):
    phone = f"{stack.mode}-1"
    assert reply(stack, "shop.add_customer", {"phone": phone, "name": "Li Lei", "balance": "10.50",
                                              "since": "2020-02-29"})["result"] == 1
    assert reply(stack, "shop.add_customer", [f"{stack.mode}-2", "Han", 0, "2021-01-01"])["result"] == 1
    assert reply(stack, "shop.lookup", [phone])["result"] == {"name": "Li Lei", "balance": 10.5,
                                                              "since": "2020-02-29"}
    assert reply(stack, "shop.lookup", ["nobody"])["result"] is None
    assert reply(stack, "shop.like_phone", [f"{stack.mode}-"])["result"] == [{"phone": phone},
                                                                          {"phone": f"{stack.mode}-2"}]
    assert reply(stack, "shop.how_many", {"prefix": f"{stack.mode}-"})["result"] == 2
    assert reply(stack, "shop.lookup", {})["error"]["code"] == -32602

    duplicate = reply(stack, "shop.add_customer", [phone, "again", 1, "2022-02-02"])["error"]
    assert duplicate["code"] == -32050
    assert duplicate["data"]["code"] == 1062  # ER_DUP_ENTRY
    assert "Duplicate entry" in duplicate["message"]
    assert reply(stack, "shop.how_many", [f"{stack.mode}-"])["result"] == 2


def test_statement_past_its_limit_gets_32001_and_stops_in_the_database(stack, mariadb):
    failed = reply(stack, "shop.sleep", [600])["error"]  # without the database's limit it would sleep on
    assert failed["code"] == -32001

    def running() -> int:
        with mariadb.connect() as conn, conn.cursor() as cursor:
            cursor.execute("select count(*) from information_schema.processlist "
                           "where info like '%%sbusr-sleep-marker%%' and id <> connection_id()")
            return cursor.fetchone()[0]

    wait_for(lambda: running() == 0, "the timed-out statement to leave the process list", timeout=60)


def test_database_restart_gives_32051_then_calls_succeed_again(stack, mariadb):
    assert reply(stack, "shop.how_many", ["x"])["result"] == 0
    mariadb.stop()
    try:
        assert reply(stack, "shop.how_many", ["x"])["error"]["code"] == -32051
    finally:
        mariadb.start()
    assert [reply(stack, "shop.how_many", ["x"])["result"] for _ in range(4)] == [0] * 4
