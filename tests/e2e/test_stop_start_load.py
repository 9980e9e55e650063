"""Start and stop edges of sbusr-server and sbusr-api under CPU load the test makes itself.

Busy loops (one more than there are cores) run for the whole of each test. Every request is
counted: a request the server read must get exactly one reply, and since the bus keeps each
caller's packets in order, every request sent before one that was answered was read. Assertions
are events (log lines by pattern, replies, exit statuses); durations are only printed, or bounded
generously.
"""

from __future__ import annotations

import itertools
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sbusr.testing.processes import BusProcess, free_port
from tests.helpers.cpuload import busy_cpus
from tests.helpers.load import LoadCaller
from tests.helpers.processes import eventually
from tests.helpers.server import SERVER_UNIT, ServerProcess, write_config

WAIT = 60.0  # generous bound for "soon" on a loaded machine
GRACEFUL = 3  # [server] graceful_timeout of these servers
MODES = ["thread", "process"]
STOP_CYCLES = 2  # per mode

ENDPOINT = textwrap.dedent('''
    import oslo_messaging


    class Spin:
        target = oslo_messaging.Target(namespace="spin")

        def work(self, ctxt, n):
            total = 0
            for i in range(n):
                total += i * i
            return total
''')

#: lines a stopping server must never log
NEVER_WHEN_STOPPING = ("already connected", "standing by", "did not stop cleanly", "Task was destroyed",
                       "cannot join thread", "Traceback", "CRITICAL")

_clients = itertools.count(2)  # client ids are 0..127
_callers = itertools.count(1)


@pytest.fixture(scope="module")
def bus():
    with BusProcess() as bus:
        yield bus


@pytest.fixture
def cpu_load():
    with busy_cpus() as loops:
        yield loops


def _config(folder: Path, port: int, mode: str, client: int, **smartbus: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spin.py").write_text(ENDPOINT)
    return write_config(folder / "sbusr.conf", port,
                        {"endpoints": {"directories": [folder]},
                         "execution": {"mode": mode, "workers": 2},
                         "server": {"graceful_timeout": GRACEFUL},
                         "metrics": {"port": free_port()},
                         **({"smartbus": smartbus} if smartbus else {})}, client=client)


def _is_result(reply: dict) -> bool:
    return "result" in reply


def _after(out: str, marker: str) -> str:
    """The log after the first line containing ``marker`` ('' if there is none)."""
    at = out.find(marker)
    return "" if at < 0 else out[at:]


# --------------------------------------------------------------------------- stop under load

@pytest.mark.parametrize("mode", MODES)
def test_stop_under_load_closes_the_link_once_and_answers_every_request_it_read(bus, tmp_path, cpu_load,
                                                                                mode):
    figures = []
    for cycle in range(STOP_CYCLES):
        client = next(_clients)
        proc = ServerProcess(_config(tmp_path / f"c{cycle}", bus.port, mode, client)).start()
        try:
            with LoadCaller(bus.host, bus.port, (SERVER_UNIT, client), process=next(_callers),
                            method="spin.work", params=[2000], interval=0.0025,
                            prefix=f"stop-{mode}-{cycle}") as load:
                began = time.monotonic()
                assert load.joined.wait(WAIT), proc.output()
                assert eventually(lambda: load.count_replies(_is_result) >= 100, WAIT), proc.output()
                sent_before, _ = load.snapshot()
                signalled = time.monotonic()
                proc.signal(signal.SIGTERM)
                # the link closed; the bus forwarded every reply the server sent before this notice
                assert load.left.wait(GRACEFUL + WAIT), proc.output()
                link_closed = time.monotonic() - signalled
                load.stop_sending()
                assert proc.proc.wait(WAIT) == 0, proc.output()
                exited = time.monotonic() - signalled
                sent, replies = load.snapshot()
        finally:
            proc.stop()
        out = proc.output()
        order = [rid for rid, _ in sent]
        answered = [i for i, rid in enumerate(order) if replies.get(rid)]
        read = order[:answered[-1] + 1]  # sent before the last answered one: read by the server
        lost = [rid for rid, present in sent[len(read):] if present]  # sent while it was on the bus
        assert all(len(replies.get(rid, [])) == 1 for rid in read), \
            [rid for rid in read if len(replies.get(rid, [])) != 1][:10]
        assert all(len(r) == 1 for r in replies.values()), "a request was answered twice"
        kinds = {("result" if "result" in r[0] else r[0]["error"]["message"]) for r in replies.values()}
        assert kinds <= {"result", "server is shutting down"}, kinds
        stopping = _after(out, "signal SIGTERM: stopping")
        assert stopping, out
        assert out.count("registered on SmartBus") == 1, out
        for never in NEVER_WHEN_STOPPING:
            assert never not in out, (never, out)
        assert " serving " not in stopping and "registered on SmartBus" not in stopping, out
        assert link_closed < GRACEFUL + WAIT  # the bound is graceful_timeout + 1 s: printed below
        rate = len(sent_before) / max(1e-9, signalled - began)
        shut = sum(1 for r in replies.values() if "error" in r[0])
        figures.append((cycle, len(sent), len(sent_before), len(read), shut, len(lost), link_closed, exited,
                        rate))
    print(f"\n{mode}: cycle, sent, sent before SIGTERM, read and answered once (of which 'shutting down'), "
          f"sent while it was on the bus but lost in the closing instant, link closed after SIGTERM (s), "
          f"process gone (s), calls/s before SIGTERM")
    for row in figures:
        print("  {} {:6d} {:6d} {:6d} {:6d} {:4d} {:6.2f} {:6.2f} {:6.0f}".format(*row))


# --------------------------------------------------------------------------- stop while starting

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("moment", ["launched", "endpoints loaded", " serving ", "registered on SmartBus"])
def test_sigterm_at_any_moment_of_start_up_ends_the_server_cleanly(bus, tmp_path, cpu_load, mode, moment):
    client = next(_clients)
    proc = ServerProcess(_config(tmp_path, bus.port, mode, client)).launch()
    try:
        if moment == "endpoints loaded":
            loaded = re.compile(r"Loaded \d+ endpoints")
            assert eventually(lambda: loaded.search(proc.output()), WAIT * 2), proc.output()
        elif moment != "launched":
            assert eventually(lambda: moment in proc.output(), WAIT * 2), proc.output()
        proc.signal(signal.SIGTERM)
        code = proc.proc.wait(GRACEFUL + WAIT)
        out = proc.output()
    finally:
        proc.stop()
    # before Python installed its handler (still importing) the signal's default action ends it
    assert code == 0 or (moment == "launched" and code == -signal.SIGTERM and not out), out
    for never in NEVER_WHEN_STOPPING:
        assert never not in out, (never, out)
    stopping = _after(out, "signal SIGTERM: stopping")
    assert " serving " not in stopping, out
    # a registration under way may complete while stopping; none starts after "stopping"
    assert out.count("registered on SmartBus") <= 1, out


# --------------------------------------------------------------------------- bus unreachable

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_bus_is_unreachable_stops_at_once(tmp_path, cpu_load, mode, signum):
    # nothing listens at that port; connect_timeout is far longer than any bound below
    conf = _config(tmp_path, free_port(), mode, next(_clients), connect_timeout=300)
    proc = ServerProcess(conf).launch()
    try:
        assert eventually(lambda: "cannot connect to" in proc.output(), WAIT * 2), proc.output()
        signalled = time.monotonic()
        proc.signal(signum)
        assert proc.proc.wait(WAIT) == 0, proc.output()
        stopped = time.monotonic() - signalled
        out = proc.output()
    finally:
        proc.stop()
    name = signal.Signals(signum).name
    stopping = _after(out, f"signal {name}: stopping")
    assert stopping, out
    assert " serving " not in stopping, out
    assert "stopped" in stopping, out
    print(f"\n{mode} {name} with the bus unreachable: process gone {stopped:.2f} s after the signal")


def _api_config(folder: Path, bus_port: int, http_port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder / "api.conf", bus_port,
                        {"smartbus": {"connect_timeout": 300},
                         "metrics": {"port": free_port()},
                         "api": {"listen_host": "127.0.0.1", "listen_port": http_port,
                                 "unit_id": SERVER_UNIT, "client_id": next(_clients)}})


def _launch_api(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "sbusr.cmd.api", "--config-file", str(config)],
                                stdout=out, stderr=subprocess.STDOUT)


def _health(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_api_with_the_bus_unreachable_answers_health_503_at_once(tmp_path, cpu_load):
    http_port = free_port()
    log = tmp_path / "api.log"
    proc = _launch_api(_api_config(tmp_path, free_port(), http_port), log)
    try:
        launched = time.monotonic()
        assert eventually(lambda: _health(http_port), WAIT * 2) == 503, log.read_text()
        answered = time.monotonic() - launched
        # still inside the (300 s) connect wait: the listener did not wait for the bus
        assert "SmartBus identity" not in log.read_text(), log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"\nsbusr-api, bus unreachable: /health 503 {answered:.2f} s after launch")


def test_api_on_a_taken_port_fails_at_once_with_one_line(tmp_path, cpu_load):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        http_port = taken.getsockname()[1]
        log = tmp_path / "api.log"
        proc = _launch_api(_api_config(tmp_path, free_port(), http_port), log)
        try:
            code = proc.wait(WAIT * 2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = log.read_text()
    assert code != 0, out
    lines = [line for line in out.splitlines() if "cannot listen on" in line]
    assert len(lines) == 1 and f"127.0.0.1:{http_port}" in lines[0], out
    assert "Traceback" not in out and "SmartBus identity" not in out, out

