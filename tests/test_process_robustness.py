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
import time
from pathlib import Path

import pytest

from sbusr import jsonrpc
from tests.helpers.busproc import BusProcess
from tests.helpers.ipsc import FakeIpsc
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

_clients = iter(range(120, 200))


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
