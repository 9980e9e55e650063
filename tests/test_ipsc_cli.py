"""sbusr-ipsc: the stand-in CLI the README's demos use, and the README's first endpoint itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sbusr.smartbus import codec
from sbusr.smartbus.interface import ClientConfig, ClientHandlers
from sbusr.smartbus.threaded import ThreadedClient
from tests.helpers.busproc import BusProcess
from tests.helpers.server import ServerProcess, write_config

ROOT = Path(__file__).resolve().parent.parent


def readme_endpoint() -> str:
    """The "Your first endpoint" example, exactly as the README shows it."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n(# methods/weather.py\n.*?)```", text, re.S)
    assert match, "README lost its first-endpoint example"
    return match.group(1)


@pytest.fixture(scope="module")
def bus():
    with BusProcess() as bus:
        yield bus


@pytest.fixture(scope="module")
def server(bus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("methods")
    (folder / "weather.py").write_text(readme_endpoint())
    conf = write_config(folder / "sbusr.conf", bus.port, {"endpoints": {"directories": [folder]}})
    with ServerProcess(conf) as proc:
        yield proc


def ipsc(bus, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    command, *rest = args
    return subprocess.run([sys.executable, "-m", "sbusr.cmd.ipsc", command, "--port", str(bus.port), *rest],
                          capture_output=True, text=True, timeout=timeout)


def test_readme_endpoint_is_short_and_works(bus, server):
    code = [line for line in readme_endpoint().splitlines() if line.strip()]
    assert len(code) < 15
    done = ipsc(bus, "call", "weather.sk", '"101010100"')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == {"city": "101010100", "temp": -1}
    named = ipsc(bus, "call", "--json", '{"code": "x"}', "weather.sk")
    assert json.loads(named.stdout)["result"]["city"] == "x"


def test_call_exit_codes(bus, server):
    ok = ipsc(bus, "call", "add", "1", "2")
    assert (ok.returncode, json.loads(ok.stdout)["result"]) == (0, 3)
    missing = ipsc(bus, "call", "nosuch")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"]["code"] == -32601
    nobody = ipsc(bus, "call", "--server-unit", "30", "--timeout", "1", "echo", "x")
    assert nobody.returncode == 2
    assert "no reply" in nobody.stderr


def test_serve_acknowledges_flows(bus):
    proc = subprocess.Popen([sys.executable, "-m", "sbusr.cmd.ipsc", "serve", "--port", str(bus.port),
                             "--unit", "4", "--process", "2"], stdout=subprocess.PIPE, text=True)
    client = ThreadedClient(ClientConfig("127.0.0.1", bus.port, unit_id=30, client_id=0),
                            ClientHandlers())
    try:
        assert "acknowledging flows" in proc.stdout.readline()
        client.start()
        assert client.wait_connected(10)
        flow = client.invoke_flow(4, 2, "Project1", "Flow1", b'["Hello","Flow"]', want_result=True,
                                  ack_timeout=5, result_timeout=5)
        assert flow.ack.result(10).ack == codec.FLOW_ACK_OK
        assert json.loads(flow.result.result(10)) == ["Hello", "Flow"]
    finally:
        client.stop()
        proc.terminate()
        assert proc.wait(10) == 0
