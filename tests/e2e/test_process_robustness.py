"""Process mode serves what thread mode serves, and gives up (or backs off) when workers cannot start.

Through a real bus and real sbusr-server processes. Same input, same assertions in both modes where
both modes apply: a method offered twice (a folder's ``echo``, a legacy ``methods`` package's
``add``) is one WARNING and the first loaded wins. Process mode only: workers that cannot boot stop a
starting server with one line naming the cause and a non-zero exit; after start-up, the running
generation keeps serving while a failing reload says why.
"""

from __future__ import annotations

import os
import re
import signal
import textwrap
from pathlib import Path

import pytest

from sbusr.jsonrpc.errors import SERVER_ERROR
from sbusr.testing.ipsc import FakeIpsc
from sbusr.testing.processes import BusProcess
from tests.helpers.processes import eventually
from tests.helpers.server import SERVER_UNIT, ServerProcess, write_config

WAIT = 60.0  # generous bound for anything that should happen "soon" on a busy machine
MODES = ["thread", "process"]

FOLDER_ECHO = textwrap.dedent('''
    import oslo_messaging


    class Mine:
        target = oslo_messaging.Target()

        def echo(self, ctxt, txt):
            return {"mine": txt}
''')

LEGACY_METHODS = textwrap.dedent('''
    def add(a, b):
        return {"legacy": a + b}
''')

HOOKS = textwrap.dedent('''
    import os


    def fail():
        raise RuntimeError("no database today")


    def fail_when_flagged():
        if os.path.exists({flag!r}):
            raise RuntimeError("flagged")
''')

_clients = iter(range(100, 128))


@pytest.fixture(scope="module")
def bus():
    with BusProcess() as bus:
        yield bus


def _call(ipsc: FakeIpsc, client: int, method: str, params: list, rid: str) -> dict:
    return ipsc.call_rpc(SERVER_UNIT, client, {"jsonrpc": "2.0", "id": rid, "method": method,
                                               "params": params}, timeout=WAIT)


def _python_path(*folders: Path) -> str:
    return os.pathsep.join(filter(None, [*map(str, folders), os.environ.get("PYTHONPATH")]))


# --------------------------------------------------------------------------- duplicates

@pytest.mark.parametrize("mode", MODES)
def test_a_name_the_builtins_offer_too_is_one_warning_and_the_first_loaded_wins(bus, tmp_path, mode):
    client = next(_clients)
    folder = tmp_path / "methods-folder"
    folder.mkdir()
    (folder / "mine.py").write_text(FOLDER_ECHO)
    legacy = tmp_path / "legacy"
    (legacy / "methods").mkdir(parents=True)
    (legacy / "methods" / "__init__.py").write_text(LEGACY_METHODS)
    conf = write_config(tmp_path / "sbusr.conf", bus.port,
                        {"endpoints": {"directories": [folder], "legacy_packages": "methods"},
                         "execution": {"mode": mode, "workers": 2}}, client=client)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", _python_path(legacy))
        proc = ServerProcess(conf).start()
    try:
        with FakeIpsc(bus.host, bus.port, unit=4, process=client % 16) as ipsc:
            for i in range(4):  # both workers in process mode
                assert _call(ipsc, client, "echo", ["hi"], f"e{i}")["result"] == {"mine": "hi"}
                assert _call(ipsc, client, "add", [2, 3], f"a{i}")["result"] == {"legacy": 5}
            assert _call(ipsc, client, "plus", [1, 2], "p")["result"] == 3  # the built-ins still serve
            reload = _call(ipsc, client, "sys.reload", [], "r")["result"]
            assert sorted(d[0] for d in reload["duplicates"]) == ["add", "echo"], reload
            assert _call(ipsc, client, "echo", ["again"], "e-after")["result"] == {"mine": "again"}
        out = proc.output()
    finally:
        proc.stop()
    assert "Traceback" not in out, out
    for name in ("echo", "add"):
        # one WARNING per load: at start-up and again at the reload, in both modes
        warnings = re.findall(rf"WARNING \S+ \[[^]]*\] Method {name} is offered by .*", out)
        assert len(warnings) == 2, (name, warnings, out)


# --------------------------------------------------------------------------- workers that cannot boot

def _hooked_config(tmp_path: Path, bus_port: int, mode: str, client: int, hook: str | None,
                   endpoint: str | None = None) -> Path:
    folder = tmp_path / "ep"
    folder.mkdir(exist_ok=True)
    (folder / "mine.py").write_text(endpoint or FOLDER_ECHO)
    execution: dict = {"mode": mode, "workers": 2}
    if hook:
        execution["worker_init"] = hook
    return write_config(tmp_path / "sbusr.conf", bus_port,
                        {"endpoints": {"directories": [folder]}, "execution": execution,
                         "server": {"graceful_timeout": 5}}, client=client)


def _hooks(tmp_path: Path) -> Path:
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sbusr_robust_hooks.py").write_text(HOOKS.format(flag=str(tmp_path / "flag")))
    return hooks


@pytest.mark.parametrize("mode", MODES)
def test_a_worker_init_that_raises_stops_a_starting_server_with_one_line(bus, tmp_path, mode):
    client = next(_clients)
    conf = _hooked_config(tmp_path, bus.port, mode, client, "sbusr_robust_hooks:fail")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", _python_path(_hooks(tmp_path)))
        proc = ServerProcess(conf).launch()
    try:
        code = proc.proc.wait(WAIT * 3)
        out = proc.output()
    finally:
        proc.stop()
    assert code == 3, out  # gunicorn's "Worker failed to boot" status
    lines = [line for line in out.splitlines() if "Worker failed to boot" in line]
    assert len(lines) == 1, out
    assert "CRITICAL" in lines[0]
    assert "worker_init sbusr_robust_hooks:fail raised RuntimeError: no database today" in lines[0], lines
    assert "registered on SmartBus" not in out and " serving " not in out, out
    assert "Traceback" not in out, out  # the traceback only with --debug


def test_a_crash_while_loading_stops_a_starting_server_with_its_exit_status(bus, tmp_path):
    client = next(_clients)
    crashing = FOLDER_ECHO + "\nimport os\nos._exit(7)\n"
    conf = _hooked_config(tmp_path, bus.port, "process", client, None, crashing)
    proc = ServerProcess(conf).launch()
    try:
        code = proc.proc.wait(WAIT * 3)
        out = proc.output()
    finally:
        proc.stop()
    assert code == 3, out
    lines = [line for line in out.splitlines() if "Worker failed to boot" in line]
    assert len(lines) == 1 and "a worker exited while starting (exit code 7)" in lines[0], out
    assert "registered on SmartBus" not in out, out


@pytest.mark.parametrize("mode", MODES)
def test_a_reload_whose_worker_init_raises_keeps_the_running_code_and_says_why(bus, tmp_path, mode):
    client = next(_clients)
    conf = _hooked_config(tmp_path, bus.port, mode, client, None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", _python_path(_hooks(tmp_path)))
        proc = ServerProcess(conf).start()
    try:
        with FakeIpsc(bus.host, bus.port, unit=5, process=client % 16) as ipsc:
            assert _call(ipsc, client, "echo", ["before"], "b")["result"] == {"mine": "before"}
            _hooked_config(tmp_path, bus.port, mode, client, "sbusr_robust_hooks:fail")
            reply = _call(ipsc, client, "sys.reload", [], "r")
            assert reply["error"]["code"] == SERVER_ERROR, reply
            message = reply["error"]["message"]
            assert message.startswith("reload failed, the previous code keeps serving: "), message
            assert "worker_init sbusr_robust_hooks:fail raised RuntimeError: no database today" in message
            for i in range(4):
                assert _call(ipsc, client, "echo", [i], f"a{i}")["result"] == {"mine": i}
        out = proc.output()
    finally:
        proc.stop()
    assert "Worker failed to boot" not in out and "Traceback" not in out, out


def test_a_replacement_that_cannot_boot_backs_off_while_the_others_serve(bus, tmp_path):
    client = next(_clients)
    conf = _hooked_config(tmp_path, bus.port, "process", client, "sbusr_robust_hooks:fail_when_flagged")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", _python_path(_hooks(tmp_path)))
        proc = ServerProcess(conf).start()
    try:
        workers = proc.workers()
        assert len(workers) == 2
        (tmp_path / "flag").touch()  # from now on a new worker cannot boot
        os.kill(workers[0], signal.SIGKILL)
        failures = re.compile(r"ERROR \S+ \[[^]]*\] worker pid \d+ failed to boot \((\d+) in a row\): "
                              r"worker_init sbusr_robust_hooks:fail_when_flagged raised RuntimeError: "
                              r"flagged; next attempt in ([\d.]+) s")
        assert eventually(lambda: len(failures.findall(proc.output())) >= 3, WAIT * 2), proc.output()
        seen = [(int(n), float(delay)) for n, delay in failures.findall(proc.output())]
        assert [n for n, _ in seen[:3]] == [1, 2, 3], seen
        assert seen[0][1] < seen[1][1] < seen[2][1], seen  # it backs off
        with FakeIpsc(bus.host, bus.port, unit=6, process=client % 16) as ipsc:
            for i in range(4):  # the surviving worker answers everything
                assert _call(ipsc, client, "echo", [i], f"s{i}")["result"] == {"mine": i}
            (tmp_path / "flag").unlink()  # boots work again: the next attempt replaces the dead worker
            assert eventually(lambda: len(proc.workers()) == 2, WAIT * 2), proc.output()
        assert proc.proc.poll() is None
    finally:
        proc.stop()
