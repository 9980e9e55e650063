"""sbusr-server at its edges, through a real bus: starting and stopping under continuous load, hot
standby, SIGTERM in every state, and what process mode does when a worker cannot serve or the master
dies.

Every assertion counts requests and replies; nothing depends on how fast the machine is. Where a
test needs "a call is still running", the call waits for a file the test creates later.
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sbusr.jsonrpc.errors import SERVER_BUSY
from sbusr.testing.ipsc import FakeIpsc
from sbusr.testing.processes import free_port
from tests.helpers.load import LoadCaller
from tests.helpers.processes import eventually, pid_alive
from tests.helpers.server import ServerProcess, write_config

WAIT = 30.0  # generous bound for anything that should happen "soon" on a busy machine

ENDPOINT = textwrap.dedent('''
    import os
    import time

    import oslo_messaging

    from sbusr.decorators import limits


    class Edge:
        target = oslo_messaging.Target(namespace="edge")

        def pid(self, ctxt):
            return os.getpid()

        @limits(timeout=0)
        def wait_file(self, ctxt, path, started):
            open(started, "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.02)
            return "released"
''')

BLOCKING_HOOK = textwrap.dedent('''
    import os
    import time

    def init():
        while not os.path.exists({path!r}):
            time.sleep(0.05)
''')


def wait_for(predicate, timeout: float = WAIT, interval: float = 0.05):
    return eventually(predicate, timeout, interval)


@pytest.fixture(scope="module")
def bus(sbusr_bus):
    """The session's development bus: addresses on it come from ``ids`` (sbusr_identities)."""
    return sbusr_bus


@pytest.fixture
def ids(sbusr_identities):
    return sbusr_identities




def _config(folder: Path, port: int, mode: str, address: tuple[int, int], execution: dict | None = None,
            server: dict | None = None, env_hooks: Path | None = None, smartbus: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edge.py").write_text(ENDPOINT)
    return write_config(folder / "sbusr.conf", port,
                        {"endpoints": {"directories": [folder]},
                         "execution": {"mode": mode, "workers": 2, **(execution or {})},
                         "server": {"graceful_timeout": 60, **(server or {})},
                         "smartbus": dict(smartbus or {})}, unit=address[0], client=address[1])


#: a server that cannot register (no bus, or a hot standby) serves after this, not the default 10 s
UNREGISTERED = {"connect_timeout": 1}


def ipsc_address(ids) -> dict[str, int]:
    """A free IPSC-role address on the shared bus, as keyword arguments."""
    unit, process = ids.ipsc()
    return {"unit": unit, "process": process}


def _reply_kind(reply: dict) -> str:
    if "result" in reply:
        return "result"
    error = reply.get("error") or {}
    return f"{error.get('code')} {error.get('message')}"


# --------------------------------------------------------------------------- start and stop under load

@pytest.mark.parametrize("mode", ["thread", "process"])
def test_startup_under_load_answers_every_request_after_registration_once(ids, bus, tmp_path, mode):
    server = ids.server()
    conf = _config(tmp_path, bus.port, mode, server)
    with LoadCaller(bus.host, bus.port, server, **ipsc_address(ids), prefix=f"up-{mode}",
                    interval=0.005) as load:
        assert wait_for(lambda: len(load.snapshot()[0]) >= 20)  # requests flow before the server registers
        proc = ServerProcess(conf).launch()
        try:
            assert load.joined.wait(WAIT * 2), proc.output()
            def answered_after_join() -> int:
                sent, replies = load.snapshot()
                return sum(1 for rid, present in sent
                           if present and any("result" in r for r in replies.get(rid, ())))

            # keep the load going well past registration (as this client learns of it: the join
            # notice can trail the first answers on a busy machine)
            assert wait_for(lambda: answered_after_join() >= 50), proc.output()
            load.stop_sending()
            sent, _ = load.snapshot()
            after = [rid for rid, present in sent if present]
            assert wait_for(lambda: not load.unanswered(after)), load.unanswered(after)[:10]
            # a duplicate would come before the bus's notice that the server left: every reply it
            # sent is forwarded first
            assert proc.stop() == 0, proc.output()
            assert wait_for(load.left.is_set), "the bus's leave notice of the server"
            sent, replies = load.snapshot()
        finally:
            proc.stop()
    assert len(after) >= 50
    assert all(len(replies.get(rid, [])) == 1 for rid in after), "a request was answered twice"
    assert all(len(r) == 1 for r in replies.values())
    kinds = {_reply_kind(r[0]) for r in replies.values()}
    assert kinds <= {"result", f"{SERVER_BUSY} server is starting"}, kinds
    assert "serves no methods" not in proc.output()


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_shutdown_under_load_answers_every_request_once_until_the_link_closes(ids, bus, tmp_path, mode):
    server = ids.server()
    conf = _config(tmp_path / "ep", bus.port, mode, server)
    proc = ServerProcess(conf).start()
    release, started = tmp_path / "release", tmp_path / "started"
    try:
        with FakeIpsc(bus.host, bus.port, **ipsc_address(ids)) as ipsc, \
                LoadCaller(bus.host, bus.port, server, **ipsc_address(ids),
                           prefix=f"down-{mode}", interval=0.005) as load:
            blocked: dict = {}
            caller = threading.Thread(target=lambda: blocked.update(ipsc.call_rpc(
                *server, {"jsonrpc": "2.0", "id": "blocked", "method": "edge.wait_file",
                                      "params": [str(release), str(started)]}, timeout=120)))
            caller.start()
            assert wait_for(started.exists)
            assert wait_for(lambda: load.count_replies(lambda r: "result" in r) >= 20)
            proc.signal(signal.SIGTERM)  # the blocked call keeps the link open while the server drains

            def shutting_down(reply: dict) -> bool:
                return reply.get("error", {}).get("message") == "server is shutting down"

            assert wait_for(lambda: load.count_replies(shutting_down) >= 30), proc.output()
            sent, _ = load.snapshot()
            before_release = [rid for rid, _ in sent]
            assert wait_for(lambda: not load.unanswered(before_release)), load.unanswered(before_release)[:10]
            release.touch()  # the last call finishes; the server closes its link while the load goes on
            caller.join(WAIT)
            assert proc.proc.wait(WAIT) == 0, proc.output()
            assert wait_for(load.left.is_set)  # every reply the server sent came before this notice
            load.stop_sending()
            sent, replies = load.snapshot()
    finally:
        release.touch()
        proc.stop()
    assert blocked.get("result") == "released"
    assert all(len(replies[rid]) == 1 for rid in before_release)
    assert all(len(r) == 1 for r in replies.values()), "a request was answered twice"
    kinds = {_reply_kind(r[0]) for r in replies.values()}
    assert kinds <= {"result", f"{SERVER_BUSY} server is shutting down"}, kinds
    assert "serves no methods" not in proc.output()


# --------------------------------------------------------------------------- hot standby

def test_hot_standby_takes_over_when_the_first_server_leaves(ids, bus, tmp_path):
    server = ids.server()
    first = ServerProcess(_config(tmp_path / "a", bus.port, "process", server)).start()
    second = ServerProcess(_config(tmp_path / "b", bus.port, "process", server, smartbus=UNREGISTERED),
                           standby=True)
    third = ServerProcess(_config(tmp_path / "c", bus.port, "thread", server, smartbus=UNREGISTERED),
                          standby=True)
    try:
        second.start()
        assert "standing by" in second.output()
        # the join and leave notices of the server's identity, as every IPSC on the bus gets them
        with FakeIpsc(bus.host, bus.port, **ipsc_address(ids)) as ipsc, \
                LoadCaller(bus.host, bus.port, server, **ipsc_address(ids),
                           interval=3600) as notices:
            def pid_answer() -> int:
                return ipsc.call_rpc(*server, {"jsonrpc": "2.0", "id": f"p{time.monotonic()}",
                                               "method": "edge.pid"}, timeout=WAIT)["result"]

            assert pid_answer() in first.workers()
            first.signal(signal.SIGTERM)
            assert first.proc.wait(WAIT) == 0
            assert wait_for(notices.left.is_set), "no leave notice of the first server"
            assert wait_for(lambda: notices.present), f"the standby did not take over:\n{second.output()}"
            assert pid_answer() in second.workers(), second.output()
            assert "registered on SmartBus" in second.output()
            # a standby refused by the bus stops on SIGTERM like any server
            third.start()
            third.signal(signal.SIGTERM)
            assert third.proc.wait(WAIT) == 0, third.output()
            assert pid_answer() in second.workers()
    finally:
        for proc in (first, second, third):
            proc.stop()


# --------------------------------------------------------------------------- SIGTERM in every state

@pytest.mark.parametrize("mode", ["thread", "process"])
def test_sigterm_without_a_bus_ends_the_server(ids, tmp_path, mode):
    conf = _config(tmp_path, free_port(), mode, ids.server(), smartbus=UNREGISTERED)  # nothing listens there
    proc = ServerProcess(conf).launch()
    try:
        assert wait_for(lambda: " serving " in proc.output()), proc.output()
        proc.signal(signal.SIGTERM)
        # 0, not the 1 of the hard exit that fires graceful_timeout + 1.5 s after SIGTERM
        assert proc.proc.wait(WAIT + 60) == 0, proc.output()
    finally:
        proc.stop()


def test_sigterm_while_workers_are_still_starting_ends_the_server(ids, bus, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sbusr_blocking_hook.py").write_text(BLOCKING_HOOK.format(path=str(tmp_path / "never")))
    conf = _config(tmp_path / "ep", bus.port, "process", ids.server(),
                   {"worker_init": "sbusr_blocking_hook:init"}, {"graceful_timeout": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])))
        proc = ServerProcess(conf).launch()
    try:
        assert wait_for(lambda: len(proc.workers()) == 2)
        workers = proc.workers()
        proc.signal(signal.SIGTERM)
        assert proc.proc.wait(WAIT) == 0, proc.output()
        assert wait_for(lambda: not [p for p in workers if pid_alive(p)])
    finally:
        proc.stop()


# --------------------------------------------------------------------------- process-mode workers

def test_workers_exit_when_the_master_is_killed(ids, bus, tmp_path):
    proc = ServerProcess(_config(tmp_path, bus.port, "process", ids.server())).start()
    try:
        workers = proc.workers()
        assert len(workers) == 2
        proc.proc.kill()
        proc.proc.wait(WAIT)
        assert wait_for(lambda: not [p for p in workers if pid_alive(p)]), "orphaned workers still running"
    finally:
        proc.stop()
