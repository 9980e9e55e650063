"""worker_init and the methods share one thread when a process runs one call at a time: a sqlite3
connection opened in worker_init works in every call there, and fails (as sqlite3 says) where
methods run on several threads; sbusr.testing follows the same rule, and answers -32001 at a
method's time limit as the server does."""

from __future__ import annotations

import concurrent.futures
import textwrap
import time

import pytest

from sbusr.testing import Methods, RpcError, Stack, call

HOOK = textwrap.dedent('''
    import sqlite3

    conn = None


    def init():
        global conn
        conn = sqlite3.connect(":memory:")
        conn.execute("create table customers (phone text primary key, name text)")
        conn.execute("insert into customers values ('13800000000', 'Li Lei')")
''')

CRM = textwrap.dedent('''
    import threading
    import time

    import oslo_messaging

    import crm_db
    from sbusr.decorators import limits

    TOGETHER = threading.Barrier(2)


    class Crm:
        """A CRM lookup on the SQLite database worker_init opened."""

        target = oslo_messaging.Target(namespace="crm")

        def lookup(self, ctxt, phone: str) -> dict:
            row = crm_db.conn.execute("select name from customers where phone = ?", (phone,)).fetchone()
            return {"name": row[0] if row else None}

        def lookup_together(self, ctxt, phone: str) -> dict:
            """Two calls at once: they run on two threads."""
            TOGETHER.wait(60)
            return self.lookup(ctxt, phone)

        @limits(timeout=0.5)
        def hang(self, ctxt) -> None:
            time.sleep(3600)
''')

#: sqlite3: "SQLite objects created in a thread can only be used in that same thread"
SAME_THREAD = "same thread"
#: what the server answers for a method's unexpected exception
SERVER_ERROR = -32000


@pytest.fixture
def crm(tmp_path, monkeypatch):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "crm_db.py").write_text(HOOK)
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "crm.py").write_text(CRM)
    monkeypatch.syspath_prepend(str(hooks))  # worker_init is imported by name, here and in the server
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    return methods


ONE_THREAD = [{"mode": "process"}, {"mode": "thread", "workers": 1}]
SEVERAL_THREADS = [{"mode": "process", "threads": 2}, {"mode": "thread", "workers": 2}]


def _ids(execution):
    return "-".join(f"{k}={v}" for k, v in execution.items())


# ---------------------------------------------------------------------------- the testing kit

@pytest.mark.parametrize("execution", ONE_THREAD, ids=_ids)
def test_kit_one_call_at_a_time_shares_worker_inits_thread(crm, execution):
    config = {"execution": {**execution, "worker_init": "crm_db:init"}}
    with Methods(crm, config) as methods:
        assert methods.call("crm.lookup", ["13800000000"]) == {"name": "Li Lei"}
        assert methods.call("crm.lookup", ["13800000001"]) == {"name": None}


@pytest.mark.parametrize("execution", SEVERAL_THREADS, ids=_ids)
def test_kit_fails_where_the_server_runs_methods_on_several_threads(crm, execution):
    with pytest.raises(RpcError) as error:
        call(crm, "crm.lookup", ["13800000000"],
             config={"execution": {**execution, "worker_init": "crm_db:init"}})
    assert error.value.code == SERVER_ERROR and SAME_THREAD in error.value.message


def test_kit_answers_minus_32001_at_the_time_limit(crm):
    started = time.monotonic()
    with pytest.raises(RpcError) as error:
        call(crm, "crm.hang")
    assert error.value.code == -32001
    assert time.monotonic() - started < 600  # answered at the limit, not after the hour the method sleeps


def test_kit_answers_minus_32001_with_one_thread_too(crm):
    config = {"execution": {"mode": "process", "worker_init": "crm_db:init"}}
    with Methods(crm, config) as methods:
        for _ in range(2):  # the second call waits behind the stuck one, and is answered at its limit
            with pytest.raises(RpcError) as error:
                methods.call("crm.hang")
            assert error.value.code == -32001


# ---------------------------------------------------------------------------- through a real bus

@pytest.mark.parametrize("execution", ONE_THREAD, ids=_ids)
def test_server_one_call_at_a_time_shares_worker_inits_thread(crm, tmp_path, execution, on_session_bus):
    config = {"execution": {**execution, "worker_init": "crm_db:init"}}
    with Stack([crm], config, workdir=tmp_path, **on_session_bus) as stack:
        for _ in range(3):
            reply = stack.ipsc.call("crm.lookup", ["13800000000"])
            assert reply.get("result") == {"name": "Li Lei"}, reply


@pytest.mark.parametrize("execution", SEVERAL_THREADS, ids=_ids)
def test_server_methods_on_several_threads_do_not_share_worker_inits(crm, tmp_path, execution,
                                                                    on_session_bus):
    config = {"execution": {**execution, "worker_init": "crm_db:init"}, "server": {"expose_tracebacks": True}}
    config["execution"]["workers"] = execution.get("workers", 1)  # process mode: both calls in one worker
    with Stack([crm], config, workdir=tmp_path, **on_session_bus) as stack, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        # two calls at once run on two threads: at least one is not worker_init's
        replies = list(pool.map(lambda _: stack.ipsc.call("crm.lookup_together", ["13800000000"]), range(2)))
        errors = [r["error"] for r in replies if "error" in r]
        assert errors, replies
        assert all(e["code"] == SERVER_ERROR and SAME_THREAD in e["message"] for e in errors), replies
