"""Process mode forks its workers from the fork server, a copy of the master taken at start-up.

Process mode only (thread mode has no workers to fork). What must hold: the workers are the fork
server's children and run the calls; a worker's exit status still reaches the caller of a call it
died in; a reload runs code written after the fork server was made; if the fork server dies, one
ERROR line says so and the replacements start as fresh interpreters, with no call lost; and the
fork server leaves with the master.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from typing import Any

import psutil

from sbusr.execution import forkserver
from sbusr.jsonrpc.errors import WORKER_CRASHED
from sbusr.testing.stack import Stack
from tests.helpers.processes import eventually, pid_alive
from tests.helpers.server import workers_of

WAIT = 60.0

ENDPOINT = textwrap.dedent('''
    import os

    import oslo_messaging

    VERSION = {version!r}


    class Forked:
        target = oslo_messaging.Target(namespace="forked")

        def who(self, ctxt):
            return {{"pid": os.getpid(), "version": VERSION,
                     "address": os.environ.get("SBUSR_SERVER_ADDRESS")}}

        def die(self, ctxt):
            os.kill(os.getpid(), 9)
''')


def _stack(tmp_path, on_session_bus, version: str = "one") -> Stack:
    folder = tmp_path / "ep"
    folder.mkdir(exist_ok=True)
    (folder / "forked_ep.py").write_text(ENDPOINT.format(version=version))
    config = {"execution": {"mode": "process", "workers": 2}, "server": {"graceful_timeout": 5}}
    return Stack([folder], config, workdir=tmp_path, **on_session_bus)


def _fork_server(server_pid: int) -> psutil.Process:
    found = [p for p in psutil.Process(server_pid).children() if p.name() == forkserver.NAME]
    assert len(found) == 1, [(p.pid, p.name()) for p in psutil.Process(server_pid).children()]
    return found[0]


def _answering_pids(stack: Stack, calls: int = 8) -> set[int]:
    pids = set()
    for _ in range(calls):
        reply = stack.ipsc.call("forked.who", timeout=WAIT)
        pids.add(reply["result"]["pid"])
    return pids


def test_workers_are_children_of_the_fork_server_and_run_the_calls(tmp_path, on_session_bus):
    with _stack(tmp_path, on_session_bus) as stack:
        server = stack.server.proc.pid
        forks = _fork_server(server)
        workers = sorted(p.pid for p in forks.children())
        assert len(workers) == 2 and workers_of(server) == workers
        assert forks.cmdline() == psutil.Process(server).cmdline()  # a copy of the master, not a new program
        assert eventually(lambda: _answering_pids(stack) <= set(workers), WAIT)
        # set by the master after the fork server was made: a worker sees it as a fresh interpreter would
        unit, client = stack.server_address
        assert stack.ipsc.call("forked.who", timeout=WAIT)["result"]["address"] == f"{unit}:{client}"


def test_a_worker_that_dies_in_a_call_is_reported_with_its_exit_status(tmp_path, on_session_bus):
    with _stack(tmp_path, on_session_bus) as stack:
        reply = stack.ipsc.call("forked.die", timeout=WAIT)
        assert reply["error"]["code"] == WORKER_CRASHED, reply
        assert "died (killed by SIGKILL)" in reply["error"]["message"], reply
        assert reply["error"]["data"]["exit"] == "killed by SIGKILL", reply
        assert eventually(lambda: len(workers_of(stack.server.proc.pid)) == 2, WAIT), stack.server.output()
        assert stack.ipsc.call("forked.who", timeout=WAIT)["result"]["version"] == "one"


def test_a_reload_runs_the_code_as_it_is_now(tmp_path, on_session_bus):
    with _stack(tmp_path, on_session_bus) as stack:
        before = set(workers_of(stack.server.proc.pid))
        (tmp_path / "ep" / "forked_ep.py").write_text(ENDPOINT.format(version="two"))
        assert "result" in stack.ipsc.call("sys.reload", timeout=WAIT)
        for _ in range(6):
            reply = stack.ipsc.call("forked.who", timeout=WAIT)["result"]
            assert reply["version"] == "two" and reply["pid"] not in before, reply


def test_when_the_fork_server_dies_replacements_start_as_fresh_interpreters(tmp_path, on_session_bus):
    with _stack(tmp_path, on_session_bus) as stack:
        server = stack.server.proc.pid
        forks = _fork_server(server)
        forked = {p.pid for p in forks.children()}
        os.kill(forks.pid, signal.SIGKILL)
        line = re.compile(rf"ERROR sbusr\.execution \[[^]]*\] the fork server pid {forks.pid} exited "
                          r"\(killed by SIGKILL\); new workers start as fresh interpreters")
        assert eventually(lambda: line.search(stack.server.output()), WAIT), stack.server.output()

        def fresh_workers() -> list[int]:
            pids = [pid for pid in workers_of(server) if pid not in forked]
            return pids if len(pids) == 2 else []

        replacements = eventually(fresh_workers, WAIT)
        assert replacements, stack.server.output()
        for pid in replacements:
            assert "sbusr.cmd.worker" in psutil.Process(pid).cmdline()
        assert _answering_pids(stack) <= set(replacements)
        assert len(line.findall(stack.server.output())) == 1


def test_the_fork_server_leaves_with_the_master(tmp_path, on_session_bus):
    stack = _stack(tmp_path, on_session_bus).start()
    try:
        forks = _fork_server(stack.server.proc.pid).pid
        assert stack.stop_server() == 0
        assert eventually(lambda: not pid_alive(forks), WAIT)
    finally:
        stack.stop()


# --------------------------------------------------------------------------- the fork server alone

PROBE = textwrap.dedent('''
    import json, os, signal, socket, sys, threading

    from sbusr.execution import forkserver


    def run_worker(argv):
        link = socket.socket(fileno=int(argv[1]))
        link.sendall(json.dumps({"argv": argv[2:], "late": os.environ.get("LATE"),
                                 "gone": os.environ.get("GONE")}).encode())
        link.close()
        action = argv[2]
        if action == "exit":
            return int(argv[3])
        if action == "raise":
            raise SystemExit("a message instead of a status")
        threading.Event().wait()  # "hang": until killed


    if sys.argv[1] == "threads":
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    os.environ["GONE"] = "here at the fork"
    server = forkserver.start(run_worker)
    if server is None:
        print(json.dumps(None))
        sys.exit(0)
    if sys.argv[1] == "stopped":
        forkserver.SPAWN_TIMEOUT = 0.5
        os.kill(server.pid, signal.SIGSTOP)
        ours, theirs = socket.socketpair()
        try:
            server.spawn(["exit", "0"], theirs.fileno())
        except OSError as exc:
            for reader in [t for t in threading.enumerate() if t.name == "sbusr-forks"]:
                reader.join(30)  # it reaps the fork server and says how it ended
            print(json.dumps({"error": str(exc), "type": type(exc).__name__, "gone": server.gone}))
        sys.exit(0)
    os.environ["LATE"] = "set after the fork"
    del os.environ["GONE"]
    results = []
    for argv in (["exit", "5"], ["raise"], ["hang"]):
        ours, theirs = socket.socketpair()
        child = server.spawn(argv, theirs.fileno())
        theirs.close()
        seen = json.loads(ours.recv(4096))
        if argv == ["hang"]:
            child.kill()
        results.append({"seen": seen, "code": child.wait(30), "parent": os.getpid()})
    server.close()
    print(json.dumps(results))
''')


def _probe(mode: str) -> tuple[Any, str]:
    """Run PROBE in a fresh interpreter: (what it printed, its stderr)."""
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def test_the_fork_server_relays_exit_statuses_and_the_environment_of_the_moment():
    results, _ = _probe("clean")
    assert [r["code"] for r in results] == [5, 1, -signal.SIGKILL], results
    for result in results:
        assert result["seen"]["late"] == "set after the fork" and result["seen"]["gone"] is None, result
    assert [r["seen"]["argv"] for r in results] == [["exit", "5"], ["raise"], ["hang"]]


def test_no_fork_server_is_made_while_other_threads_run():
    result, stderr = _probe("threads")
    assert result is None
    assert re.search(r"not starting a fork server: \d+ threads are running; workers start as fresh "
                     r"interpreters", stderr), stderr


def test_a_fork_server_that_does_not_answer_is_killed_and_not_asked_again():
    result, stderr = _probe("stopped")
    assert result["type"] == "OSError" and result["gone"] is True, result
    assert result["error"] == "the fork server did not answer within 0.5 s", result
    assert re.search(r"the fork server pid (\d+) did not answer within 0.5 s; killing it\n"
                     r"the fork server pid \1 exited \(killed by SIGKILL\); new workers start as fresh "
                     r"interpreters\n", stderr), stderr
