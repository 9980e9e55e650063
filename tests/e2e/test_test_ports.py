"""Test stacks take free ports for everything, the metrics listener included (no fixed port 9465)."""

from __future__ import annotations

import urllib.request

import psutil

from sbusr.testing import Stack
from sbusr.testing.processes import write_config

DEFAULT_METRICS_PORT = 9465


def listening_ports(pid: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process(pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN}


def test_a_stack_serves_metrics_on_a_free_port(tmp_path):
    with Stack(workdir=tmp_path) as stack:
        assert stack.metrics_port != DEFAULT_METRICS_PORT
        ports = listening_ports(stack.server.proc.pid)
        assert ports == {stack.metrics_port}
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=30) as reply:
            assert b"sbusr_" in reply.read()
        assert "ERROR" not in stack.server.output()


def test_test_config_files_take_a_free_metrics_port_and_keep_it(tmp_path):
    path = tmp_path / "a.conf"
    text = write_config(path, 1234).read_text()
    port = int(text.split("[metrics]\nport = ")[1].split("\n")[0])
    assert port not in (0, DEFAULT_METRICS_PORT)
    assert f"[metrics]\nport = {port}\n" in write_config(path, 1234).read_text()  # a rewrite keeps it
    text = write_config(tmp_path / "b.conf", 1234, {"metrics": {"port": 5555}}).read_text()
    assert "[metrics]\nport = 5555\n" in text
