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
from sbusr.smartbus.native.threaded import ThreadedClient
from sbusr.testing.processes import BusProcess
from tests.helpers.server import ServerProcess, write_config

ROOT = Path(__file__).resolve().parents[2]


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def readme_endpoint() -> str:
    """The "Your first endpoint" example, exactly as the README shows it."""
    match = re.search(r"```python\n(# methods/weather.py\n.*?)```", readme_section("Your first endpoint"),
                      re.S)
    assert match, "README lost its first-endpoint example"
    return match.group(1)


def readme_endpoint_config() -> dict[str, dict[str, str]]:
    """The ini lines the README tells the reader to put into etc/sbusr.conf."""
    match = re.search(r"```ini\n(.*?)```", readme_section("Your first endpoint"), re.S)
    assert match, "README lost the first endpoint's configuration"
    sections: dict[str, dict[str, str]] = {}
    section = None
    for line in match.group(1).splitlines():
        if line.startswith("["):
            section = sections.setdefault(line.strip("[]"), {})
        elif "=" in line and section is not None:
            name, value = line.split("=", 1)
            section[name.strip()] = value.strip()
    return sections


@pytest.fixture(scope="module")
def bus():
    with BusProcess() as bus:
        yield bus


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The README's layout: methods/weather.py next to etc/sbusr.conf."""
    root = tmp_path_factory.mktemp("checkout")
    (root / "etc").mkdir()
    return root


@pytest.fixture(scope="module")
def server(bus, checkout):
    """Started before the endpoint exists, as the README's reader does with `make run`."""
    conf = write_config(checkout / "etc" / "sbusr.conf", bus.port)
    with ServerProcess(conf) as proc:
        yield proc


def ipsc(bus, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    command, *rest = args
    return subprocess.run([sys.executable, "-m", "sbusr.cmd.ipsc", command, "--port", str(bus.port), *rest],
                          capture_output=True, text=True, timeout=timeout)


def test_readme_endpoint_is_short_and_works_after_a_reload(bus, server, checkout):
    code = [line for line in readme_endpoint().splitlines() if line.strip()]
    assert len(code) < 15
    assert ipsc(bus, "call", "weather.sk", '"101010100"').returncode == 1  # not there yet
    # write the file where its first line says, add the README's ini lines, reload (no restart)
    path = checkout / readme_endpoint().splitlines()[0].lstrip("# ").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(readme_endpoint())
    write_config(server.config_file, bus.port, readme_endpoint_config())
    reload = ipsc(bus, "call", "sys.reload")
    assert reload.returncode == 0, reload.stdout
    changed = json.loads(reload.stdout)["result"]["config"]["changed"]
    assert changed == {"[endpoints] directories": [[], ["../methods"]]}
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


def test_call_logs_in_to_a_bus_that_requires_a_password(tmp_path):
    with BusProcess(extra_args=["--user", "ivr", "--password", "s3cret"]) as bus:
        conf = write_config(tmp_path / "sbusr.conf", bus.port, {
            "DEFAULT": {"transport_url": f"smartbus://ivr:s3cret@127.0.0.1:{bus.port}/?unit_id=19&client_id=1"}})
        with ServerProcess(conf):
            ok = ipsc(bus, "call", "--user", "ivr", "--password", "s3cret", "echo", "hi")
            assert (ok.returncode, json.loads(ok.stdout)["result"]) == (0, "hi"), ok.stderr
            refused = ipsc(bus, "call", "--timeout", "3", "echo", "hi")
            assert refused.returncode == 2
            assert "could not register" in refused.stderr
            half = ipsc(bus, "call", "--user", "ivr", "echo", "hi")
            assert half.returncode == 2 and "--user and --password go together" in half.stderr


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
