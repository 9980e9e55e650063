"""The spooler: the job directory on its own, then through a real bus (both execution modes),
including kill -9 of the whole server and the README's SMS example."""

from __future__ import annotations

import http.server
import json
import multiprocessing
import re
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sbusr.spooler.jobs import JobStore, SpoolRetry, spool
from sbusr.testing import Stack
from sbusr.testing.waiting import wait_for
from sbusr.util.procs import alive

ROOT = Path(__file__).resolve().parents[2]



def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ---------------------------------------------------------------------------- the job directory


def test_jobs_run_in_order_and_retries_wait(tmp_path):
    store = JobStore(str(tmp_path))
    first = store.enqueue("m:f", {"n": 1})
    second = store.enqueue("m:f", {"n": 2})
    job, _ = store.claim()
    assert job.id == first and job.data["kwargs"] == {"n": 1}
    store.retry(job, after=3600, reason="later")
    job2, _ = store.claim()
    assert job2.id == second
    store.finish(job2)
    nothing, due = store.claim()
    assert nothing is None and due > time.time() + 3000  # the retried one is not due yet
    assert store.counts() == {"queue": 1, "running": 0, "failed": 0}


def test_failed_jobs_keep_their_traceback_and_running_ones_come_back(tmp_path):
    store = JobStore(str(tmp_path))
    store.enqueue("m:f", {})
    store.enqueue("m:g", {})
    job, _ = store.claim()
    store.fail(job, "KeyError: 'x'", "Traceback ...")
    failed = json.loads((tmp_path / "failed" / f"{job.id}.json").read_text())
    assert failed["error"] == "KeyError: 'x'" and failed["traceback"] == "Traceback ..."
    store.claim()  # left in running/ as a killed server would
    assert store.counts() == {"queue": 0, "running": 1, "failed": 1}
    assert store.recover() == 1
    assert store.counts() == {"queue": 1, "running": 0, "failed": 1}


def _claim_all(directory: str, out: multiprocessing.Queue) -> None:
    store = JobStore(directory)
    ids = []
    while True:
        job, _ = store.claim()
        if job is None:
            break
        ids.append(job.id)
        store.finish(job)
    out.put(ids)


def test_two_processes_never_claim_the_same_job(tmp_path):
    store = JobStore(str(tmp_path))
    ids = {store.enqueue("m:f", {"i": i}) for i in range(300)}
    out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=_claim_all, args=(str(tmp_path), out))
             for _ in range(2)]
    for p in procs:
        p.start()
    claimed = out.get(timeout=120) + out.get(timeout=120)
    for p in procs:
        p.join(60)
    assert sorted(claimed) == sorted(ids)


def deliver_later(phone):
    pass


def test_spool_refuses_non_json_and_unknown_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("SBUSR_SPOOL_DIR", str(tmp_path))
    spool(deliver_later)
    assert len(deliver_later.spool(phone="1")) == 32
    with pytest.raises(TypeError):
        deliver_later.spool(phone=object())
    with pytest.raises(TypeError):
        deliver_later.spool(number="1")
    with pytest.raises(ValueError):
        SpoolRetry(after=-1)


# ---------------------------------------------------------------------------- through a real bus

JOBS = textwrap.dedent('''
    import os
    import time

    import oslo_messaging

    from sbusr.decorators import SpoolRetry, limits, spool

    OUT = {out!r}


    def _write(name, text):
        with open(os.path.join(OUT, name), "a") as f:
            f.write(text + "\\n")


    @spool
    def record(n):
        _write("record", str(n))


    @spool
    def flaky(times):
        _write("flaky", "try")
        if len(open(os.path.join(OUT, "flaky")).read().split()) <= times:
            raise SpoolRetry(after=0.1, reason="not yet")


    @spool
    def boom():
        raise ValueError("bad job")


    @limits(timeout=1)
    @spool
    def hang():
        _write("hang", "start")
        time.sleep(60)


    @spool
    def blocking(n):
        _write("blocking", f"start {{n}}")
        while os.path.exists(os.path.join(OUT, "block")):
            time.sleep(0.05)
        _write("blocking", f"end {{n}}")


    class Jobs:
        target = oslo_messaging.Target(namespace="jobs")

        def add(self, ctxt, name, kwargs):
            return globals()[name].spool(**kwargs)
''')


@pytest.fixture(scope="module", params=["thread", "process"])
def spooling(request, tmp_path_factory, on_session_bus):
    out = tmp_path_factory.mktemp("out")
    folder = tmp_path_factory.mktemp("endpoints")
    (folder / "jobs.py").write_text(JOBS.format(out=str(out)))
    spool_dir = tmp_path_factory.mktemp("spool")
    config = {"execution": {"mode": request.param, "workers": 2},
              "spooler": {"directory": spool_dir, "max_retries": 3}}
    with Stack([folder], config, workdir=tmp_path_factory.mktemp("stack"), **on_session_bus) as stack:
        yield stack, out, spool_dir


def add(stack: Stack, name: str, **kwargs) -> str:
    reply = stack.ipsc.call("jobs.add", [name, kwargs])
    assert "result" in reply, reply
    return reply["result"]


def spool_state(stack: Stack) -> dict:
    return stack.ipsc.call("sys.spool")["result"]


def test_jobs_run_in_order_once(spooling):
    stack, out, _ = spooling
    for n in range(5):
        add(stack, "record", n=n)
    wait_for(lambda: len(lines(out / "record")) == 5, "five jobs")
    assert lines(out / "record") == ["0", "1", "2", "3", "4"]
    wait_for(lambda: spool_state(stack)["running"] == 0, "nothing running")
    state = spool_state(stack)
    assert (state["queued"], state["active"], len(state["processes"])) == (0, True, 1)


def test_retry_until_it_works_or_give_up(spooling):
    stack, out, spool_dir = spooling
    add(stack, "flaky", times=2)  # fails twice, then works
    wait_for(lambda: len(lines(out / "flaky")) == 3 and spool_state(stack)["queued"] == 0, "three tries")
    before = spool_state(stack)["failed"]
    (out / "flaky").unlink()
    job_id = add(stack, "flaky", times=10)  # more than max_retries = 3
    wait_for(lambda: spool_state(stack)["failed"] == before + 1, "the job to give up")
    assert len(lines(out / "flaky")) == 4  # the first run and three retries
    failed = json.loads((spool_dir / "failed" / f"{job_id}.json").read_text())
    assert "gave up after 3 retries" in failed["error"]


def test_exception_moves_the_job_to_failed_with_its_traceback(spooling):
    stack, _out, spool_dir = spooling
    job_id = add(stack, "boom")
    path = spool_dir / "failed" / f"{job_id}.json"
    wait_for(path.exists, "the failed job")
    failed = json.loads(path.read_text())
    assert failed["error"] == "ValueError: bad job"
    assert "Traceback" in failed["traceback"] and "bad job" in failed["traceback"]
    assert "ValueError: bad job" in stack.server.output()


def test_time_limit_kills_the_spooler_process_and_the_next_job_runs(spooling):
    stack, out, spool_dir = spooling
    pids = spool_state(stack)["processes"]
    job_id = add(stack, "hang")
    add(stack, "record", n="after-hang")
    wait_for(lambda: "after-hang" in lines(out / "record"), "the job after the hung one")
    failed = json.loads((spool_dir / "failed" / f"{job_id}.json").read_text())
    assert failed["error"] == "time limit exceeded"
    assert wait_for(lambda: (p := spool_state(stack)["processes"]) and p != pids and p, "a new process")


def test_jobs_survive_kill_9_of_the_whole_server_and_run_once_after_restart(spooling):
    stack, out, _spool_dir = spooling
    (out / "block").write_text("")
    add(stack, "blocking", n=1)
    wait_for(lambda: lines(out / "blocking") == ["start 1"], "the job to start")
    add(stack, "blocking", n=2)  # queued behind it
    spooler_pids = spool_state(stack)["processes"]
    stack.kill_server()
    wait_for(lambda: not any(alive(p) for p in spooler_pids), "the spooler to die with its server")
    (out / "block").unlink()
    assert lines(out / "blocking") == ["start 1"]
    stack.start_server()
    wait_for(lambda: len(lines(out / "blocking")) == 5, "both jobs after the restart")
    wait_for(lambda: (s := spool_state(stack))["queued"] == 0 and s["running"] == 0,
             "an idle spooler: no job left that could run again")
    assert lines(out / "blocking") == ["start 1", "start 1", "end 1", "start 2", "end 2"]
    assert "they run again" in stack.server.output()





def test_a_standby_server_waits_for_the_spool_directory(spooling, tmp_path):
    from sbusr.spooler.supervisor import Spooler

    _stack, _out, spool_dir = spooling
    standby = Spooler(str(spool_dir), 1, [])
    standby.start()
    try:
        assert standby.describe()["active"] is False
    finally:
        standby.stop(5)


# ---------------------------------------------------------------------------- the README example


def readme_sms_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n(# methods/sms.py\n.*?)```", text, re.S)
    assert match, "README lost its SMS spooler example"
    return match.group(1)


class _Gateway(http.server.BaseHTTPRequestHandler):
    """An SMS gateway that is down for its first two requests; the first one also waits for the test."""

    calls: list[dict] = []
    release = threading.Event()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        if len(self.calls) == 1:
            type(self).release.wait(60)
        status = 503 if len(self.calls) <= 2 else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_readme_sms_example_returns_at_once_and_retries(tmp_path, monkeypatch, on_session_bus):
    gateway = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    monkeypatch.setenv("SMS_GATEWAY_URL", f"http://127.0.0.1:{gateway.server_port}/send")
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "sms.py").write_text(readme_sms_example())
    config = {"spooler": {"directory": tmp_path / "spool", "retry_delay": 0.2}}
    try:
        with Stack([methods], config, workdir=tmp_path, **on_session_bus) as stack:
            reply = stack.ipsc.call("sms.send", ["13800000000", "Your code is 1234"])
            assert "result" in reply, reply
            assert len(_Gateway.calls) <= 1  # answered while the slow HTTP call had not even finished
            _Gateway.release.set()
            wait_for(lambda: len(_Gateway.calls) == 3, "two retries")
            assert _Gateway.calls[-1] == {"to": "13800000000", "text": "Your code is 1234"}
            wait_for(lambda: stack.ipsc.call("sys.spool")["result"]["queued"] == 0, "an empty queue")
            assert stack.ipsc.call("sys.spool")["result"]["failed"] == 0
    finally:
        _Gateway.release.set()
        gateway.shutdown()
