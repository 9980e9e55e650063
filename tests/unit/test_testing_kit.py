"""sbusr.testing's helpers for timers and spooled jobs, and Methods closing what it opened."""

from __future__ import annotations

import json
import textwrap
import threading

import pytest

from sbusr.spooler import jobs
from sbusr.testing import Methods, RpcError, queued_jobs

HOUSEKEEPING = textwrap.dedent('''
    import time

    import oslo_messaging

    from sbusr.decorators import SpoolRetry, cron, limits, spool, timer

    CACHE = {"refreshed": 0}


    @timer(60, target="workers")
    def refresh():
        CACHE["refreshed"] += 1


    @cron(-1)
    def broken():
        raise KeyError("nope")


    @timer(1)
    def stuck():
        time.sleep(3600)


    @spool
    def deliver(phone, text):
        CACHE["sent"] = (phone, text)


    @spool
    def flaky():
        raise SpoolRetry(after=600, reason="gateway down")


    @spool
    def boom():
        raise ValueError("bad job")


    @limits(timeout=0.5)
    @spool
    def hang():
        time.sleep(3600)


    class Sms:
        target = oslo_messaging.Target(namespace="sms")

        def send(self, ctxt, phone: str, text: str) -> dict:
            return {"job": deliver.spool(phone=phone, text=text)}

        def cache(self, ctxt) -> dict:
            return CACHE
''')


@pytest.fixture
def methods(tmp_path):
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "housekeeping.py").write_text(HOUSEKEEPING)
    config = {"spooler": {"directory": str(tmp_path / "spool"), "max_retries": 1},
              "execution": {"call_timeout": 1}}
    with Methods(folder, config) as loaded:
        yield loaded


def test_run_timer_runs_one_tick(methods):
    assert "housekeeping.refresh" in methods.timers()
    methods.run_timer("housekeeping.refresh")
    methods.run_timer("refresh")
    assert methods.call("sms.cache")["refreshed"] == 2


def test_run_timer_raises_what_the_tick_raised_and_times_out_like_a_call(methods):
    with pytest.raises(KeyError):
        methods.run_timer("broken")
    with pytest.raises(RpcError) as error:
        methods.run_timer("stuck")  # call_timeout = 1
    assert error.value.code == -32001
    with pytest.raises(LookupError):
        methods.run_timer("nosuch")


def test_run_job_runs_the_spooled_job_as_the_spooler(methods, tmp_path):
    job_id = methods.call("sms.send", ["13800000000", "hi"])["job"]
    assert [j["task"] for j in queued_jobs(tmp_path / "spool")] == ["housekeeping.deliver"]
    assert methods.run_job() == {"id": job_id, "task": "housekeeping.deliver", "outcome": "done",
                                 "error": None}
    assert methods.call("sms.cache")["sent"] == ["13800000000", "hi"]
    assert queued_jobs(tmp_path / "spool") == []


def test_run_job_retries_fails_and_times_out(methods, tmp_path):
    spool_dir = tmp_path / "spool"
    flaky = jobs.JobStore(str(spool_dir)).enqueue("housekeeping.flaky", {})
    first = methods.run_job(flaky)
    assert (first["outcome"], first["error"]) == ("retry", "SpoolRetry: gateway down")
    [waiting] = queued_jobs(spool_dir)
    assert waiting["attempts"] == 1  # due in ten minutes; run_job runs it now
    assert methods.run_job(flaky)["outcome"] == "failed"  # max_retries = 1
    assert json.loads((spool_dir / "failed" / f"{flaky}.json").read_text())["error"].startswith("gave up")

    boom = jobs.JobStore(str(spool_dir)).enqueue("housekeeping.boom", {})
    assert methods.run_job(boom)["error"] == "ValueError: bad job"
    assert "Traceback" in json.loads((spool_dir / "failed" / f"{boom}.json").read_text())["traceback"]

    hang = jobs.JobStore(str(spool_dir)).enqueue("housekeeping.hang", {})
    assert methods.run_job(hang)["error"] == "time limit exceeded"  # its @limits(timeout=0.5)

    jobs.JobStore(str(spool_dir)).enqueue("housekeeping.gone", {})
    with pytest.raises(LookupError):
        methods.run_job()
    assert [j["task"] for j in queued_jobs(spool_dir)] == ["housekeeping.gone"]  # still queued
    with pytest.raises(LookupError):
        methods.run_job("no-such-id")


def test_methods_closes_what_it_opened(tmp_path, monkeypatch):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "kit_hook.py").write_text("def init():\n    pass\n")
    monkeypatch.syspath_prepend(str(hooks))
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "housekeeping.py").write_text(HOUSEKEEPING)
    before = set(threading.enumerate())
    config = {"spooler": {"directory": str(tmp_path / "spool")},
              "execution": {"mode": "process", "worker_init": "kit_hook:init"}}
    with Methods(folder, config) as loaded:
        assert jobs.configured() == str(tmp_path / "spool")
        loaded.call("sms.send", ["1", "x"])
    assert jobs.configured() is None

    def ours():
        return [t for t in set(threading.enumerate()) - before if t.is_alive()]

    from sbusr.testing.waiting import wait_for

    wait_for(lambda: not ours(), "the kit's threads to end", timeout=30)
