"""Spool job names that survive a move of the endpoint folder, jobs whose function is gone, and
kill -9 of a spooler process: through a real bus, in both execution modes."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from sbusr.spooler.jobs import JobStore, normalize_task, spool, task_name
from sbusr.testing import Methods, Stack, queued_jobs
from sbusr.testing.waiting import wait_for

JOBS = textwrap.dedent('''
    import os
    import time

    import oslo_messaging

    from sbusr.decorators import SpoolRetry, spool

    OUT = {out!r}


    def _write(name, text):
        with open(os.path.join(OUT, name), "a") as f:
            f.write(text + "\\n")


    @spool
    def record(n):
        _write("record", str(n))


    @spool(name="sms.deliver")
    def send_sms(phone):
        _write("sms", phone)


    @spool
    def blocking(n):
        _write("blocking.pid", str(os.getpid()))
        _write("blocking", f"start {{n}}")
        while os.path.exists(os.path.join(OUT, "block")):
            time.sleep(0.05)
        _write("blocking", f"end {{n}}")


    @spool
    def later(n):
        raise SpoolRetry(after=3600, reason="the gateway is down")


    class Jobs:
        target = oslo_messaging.Target(namespace="jobs")

        def add(self, ctxt, name, kwargs):
            return globals()[name].spool(**kwargs)
''')

COMEBACK = textwrap.dedent('''

    @spool
    def gone(n):
        _write("gone", str(n))
''')


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ---------------------------------------------------------------------------- names on their own

@spool
def deliver(phone):
    pass


def test_job_names_are_module_and_function_without_the_folder():
    assert task_name(deliver) == f"{__name__}.deliver"
    assert deliver.__sbusr_spool__ == f"{__name__}.deliver"
    # an endpoint file's module carries its folder's hash; the job name does not
    assert normalize_task("sbusr_ep_0123456789_sms:deliver") == "sms.deliver"
    assert normalize_task("crm.jobs:sync") == "crm.jobs.sync"
    assert normalize_task("sms.deliver") == "sms.deliver"


@spool(name="sms.deliver")
def renamed(phone):
    pass


def test_spool_takes_an_explicit_name():
    assert renamed.__sbusr_spool__ == "sms.deliver"
    with pytest.raises(ValueError):
        spool(name="a:b")
    with pytest.raises(ValueError):
        spool(name=" ")


def test_a_job_queued_from_one_folder_names_its_function_the_same_from_another(tmp_path):
    spool_dir = tmp_path / "spool"
    names = []
    for release in ("release-1", "release-2"):
        folder = tmp_path / release
        folder.mkdir()
        (folder / "jobs.py").write_text(JOBS.format(out=str(tmp_path)))
        with Methods([folder], {"spooler": {"directory": spool_dir}}) as methods:
            methods.call("jobs.add", ["record", {"n": 1}])
            methods.call("jobs.add", ["send_sms", {"phone": "138"}])
    names = [job["task"] for job in queued_jobs(spool_dir)]
    assert names == ["jobs.record", "sms.deliver", "jobs.record", "sms.deliver"]


# ---------------------------------------------------------------------------- through a real bus

@pytest.fixture(scope="module", params=["thread", "process"])
def spooling(request, tmp_path_factory, on_session_bus):
    """A server whose spooler has run the two jobs of earlier releases: every test starts from an
    idle spooler, whichever tests of this module ran before it on this pytest-xdist worker (a test
    that runs jobs returns once the supervisor has counted them: a job's output comes before its
    count, and a count still to come would spoil the next test's "before")."""
    out = tmp_path_factory.mktemp("out")
    folder = tmp_path_factory.mktemp("deployed")  # not the folder the old jobs were queued from
    (folder / "jobs.py").write_text(JOBS.format(out=str(out)))
    spool_dir = tmp_path_factory.mktemp("spool")
    store = JobStore(str(spool_dir))
    # queued by earlier releases, from another folder: the old name format and today's
    store.enqueue("sbusr_ep_0123456789_jobs:record", {"n": "old-format"})
    store.enqueue("jobs.record", {"n": "moved"})
    config = {"execution": {"mode": request.param, "workers": 2},
              "spooler": {"directory": spool_dir, "max_retries": 3, "processes": 2}}
    with Stack([folder], config, workdir=tmp_path_factory.mktemp("stack"), **on_session_bus) as stack:
        wait_for(lambda: spool_state(stack)["finished"] == 2 and not queued_jobs(spool_dir),
                 "the spooler to run the jobs of earlier releases")
        yield stack, out, spool_dir, folder


def add(stack: Stack, name: str, **kwargs) -> str:
    reply = stack.ipsc.call("jobs.add", [name, kwargs])
    assert "result" in reply, reply
    return reply["result"]


def spool_state(stack: Stack) -> dict:
    return stack.ipsc.call("sys.spool")["result"]


def test_jobs_queued_before_the_folder_moved_still_run(spooling):
    stack, out, _spool_dir, _folder = spooling
    wait_for(lambda: sorted(lines(out / "record")) == ["moved", "old-format"], "the jobs of earlier releases")
    before = spool_state(stack)
    add(stack, "send_sms", phone="13800000000")
    wait_for(lambda: lines(out / "sms") == ["13800000000"], "the job of a named @spool function")
    # counted once its process reported it, after its output: the next test starts from an idle spooler
    wait_for(lambda: spool_state(stack)["finished"] == before["finished"] + 1, "the job to be counted")


def test_a_job_whose_function_is_gone_waits_with_one_warning_until_it_is_back(spooling):
    stack, out, spool_dir, folder = spooling
    before = spool_state(stack)
    earlier = {j["id"] for j in queued_jobs(spool_dir)}  # e.g. a retry another test left waiting
    job_id = JobStore(str(spool_dir)).enqueue("jobs.gone", {"n": 7})

    def marked():
        return [j for j in queued_jobs(spool_dir)
                if j["id"] == job_id and j.get("waiting_for") == "jobs.gone"]

    wait_for(marked, "the job to be marked as waiting for its function")
    add(stack, "record", n="after-gone")  # the queue does not stall behind it
    wait_for(lambda: "after-gone" in lines(out / "record"), "the next job")
    # each spooler process looks at the job once (moving it to running/ and back) before it skips it
    wait_for(lambda: [j["id"] for j in queued_jobs(spool_dir) if j["id"] not in earlier] == [job_id],
             "the job to stay queued, alone")
    assert not list((spool_dir / "failed").iterdir())
    with open(folder / "jobs.py", "a") as fh:
        fh.write(COMEBACK)
    assert "result" in stack.ipsc.call("sys.reload")
    wait_for(lambda: lines(out / "gone") == ["7"], "the job once its function is back")
    # both jobs counted ("after-gone" and this one): the next test starts from an idle spooler
    wait_for(lambda: spool_state(stack)["finished"] == before["finished"] + 2, "the jobs to be counted")
    warnings = [line for line in stack.server.output().splitlines()
                if "no @spool function named jobs.gone" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], warnings


def test_kill_9_of_the_spooler_process_runs_its_job_again(spooling):
    stack, out, spool_dir, _folder = spooling
    before = spool_state(stack)
    (out / "block").write_text("")
    add(stack, "blocking", n=1)
    wait_for(lambda: lines(out / "blocking") == ["start 1"], "the job to start")
    running = [json.loads(p.read_text()) for p in (spool_dir / "running").iterdir()]
    assert [j["task"] for j in running] == ["jobs.blocking"]
    pid = int(lines(out / "blocking.pid")[-1])
    assert pid in spool_state(stack)["processes"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: lines(out / "blocking") == ["start 1", "start 1"], "the job to run again")
    (out / "block").unlink()
    wait_for(lambda: lines(out / "blocking") == ["start 1", "start 1", "end 1"], "the job to end")
    wait_for(lambda: spool_state(stack)["finished"] == before["finished"] + 1, "one finished job")
    after = spool_state(stack)
    assert after["killed"] == before["killed"] + 1
    assert after["failed"] == before["failed"] == 0
    assert "it runs again" in stack.server.output()


def test_a_job_waiting_to_retry_counts_as_queued_not_finished(spooling):
    stack, _out, spool_dir, _folder = spooling
    before = spool_state(stack)
    job_id = add(stack, "later", n=1)
    wait_for(lambda: spool_state(stack)["retried"] == before["retried"] + 1, "the retry")
    after = spool_state(stack)
    assert after["finished"] == before["finished"]
    assert after["queued"] == before["queued"] + 1
    assert [j["attempts"] for j in queued_jobs(spool_dir) if j["id"] == job_id] == [1]
