"""Reload re-reads the configuration: SIGHUP and sys.reload apply the mutable options, say what
changed and what needs a restart, and refuse a broken file without changing anything."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from oslo_config import cfg

from sbusr import config, execution, opts
from sbusr.execution.master.relay import Master
from sbusr.smartbus.interface import ClientConfig
from sbusr.testing.api_process import ApiProcess
from sbusr.testing.processes import BusProcess
from sbusr.testing.waiting import wait_for
from sbusr.transport.connection import BusConnection
from tests.helpers.server import SERVER_CLIENT, SERVER_UNIT, ServerProcess, write_config

ENDPOINT = '''
import time

import oslo_messaging


class Weather:
    target = oslo_messaging.Target(namespace="weather")

    def sk(self, ctxt, code):
        return {"city": code}

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        return "done"
'''



@pytest.fixture(scope="module")
def bus():
    with BusProcess() as bus:
        yield bus


def call(bus: BusProcess, method: str, *params: str, timeout: float = 60) -> dict:
    done = subprocess.run([sys.executable, "-m", "sbusr.cmd.ipsc", "call", "--port", str(bus.port),
                           "--timeout", str(timeout), method, *params],
                          capture_output=True, text=True, timeout=timeout + 30)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_sighup_and_sys_reload_re_read_the_config(bus, tmp_path, monkeypatch):
    etc = tmp_path / "etc"
    (etc / "methods").mkdir(parents=True)
    (etc / "methods" / "weather.py").write_text(ENDPOINT)
    conf = write_config(etc / "sbusr.conf", bus.port, {"endpoints": {"directories": "nowhere"},
                                                        "execution": {"call_timeout": 30},
                                                        "server": {"graceful_timout": 5}})
    monkeypatch.chdir(tmp_path.parent)  # started from elsewhere: "methods" must still mean etc/methods
    with ServerProcess(conf) as server:
        started = server.output()
        assert [line for line in started.splitlines() if " ERROR " in line] == [
            line for line in started.splitlines()
            if f"ERROR sbusr.dispatch [-] Endpoint folder {etc / 'nowhere'} ([endpoints] directories) does "
               "not exist; no endpoints loaded from it" in line]
        assert started.count("ERROR") == 1 and "Traceback" not in started
        assert (f"unknown option [server] graceful_timout in {conf} is ignored; "
                "did you mean graceful_timeout?") in started
        assert call(bus, "weather.sk", "1")["error"]["code"] == -32601

        # SIGHUP: relative folder, a shorter time limit, an option that needs a restart, a typo
        write_config(conf, bus.port, {"endpoints": {"directories": "methods"},
                                      "execution": {"call_timeout": 1, "mode": "process", "mod": "x"}})
        mark = len(server.output())
        server.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded endpoints" in server.output()[mark:], "the SIGHUP reload")
        log = server.output()[mark:]
        assert (f"configuration re-read from {conf}; changed: [endpoints] directories ['nowhere'] -> "
                "['methods']; [execution] call_timeout 30.0 -> 1.0") in log
        assert "needs a restart: [execution] mode 'thread' -> 'process'" in log
        assert f"unknown option [execution] mod in {conf} is ignored; did you mean mode?" in log
        assert "Option execution.call_timeout changed" not in log  # oslo.config's own lines: said once
        assert call(bus, "weather.sk", "1")["result"] == {"city": 1}
        slow = call(bus, "weather.slow", "5")  # the executor uses the new call_timeout
        assert slow["error"]["code"] == -32001, slow
        assert "within 1 s" in slow["error"]["message"]

        # sys.reload (what /sys/reset calls): the answer carries the same report
        write_config(conf, bus.port, {"endpoints": {"directories": "methods,missing"},
                                      "execution": {"call_timeout": 30, "mode": "process"},
                                      "smartbus": {"notify_ttl": 5000}})
        mark = len(server.output())
        answer = call(bus, "sys.reload")["result"]
        assert answer["config"]["changed"] == {
            "[endpoints] directories": [["methods"], ["methods", "missing"]],
            "[execution] call_timeout": [1.0, 30.0],
            "[smartbus] notify_ttl": [10000, 5000],
        }
        assert answer["config"]["needs_restart"] == {"[execution] mode": ["thread", "process"]}
        assert answer["config"]["files"] == [str(conf)]
        assert "weather.sk" in answer["methods"]
        log = server.output()[mark:]
        missing = [line for line in log.splitlines() if "missing" in line and "ERROR" in line]
        assert missing == [line for line in missing if "does not exist" in line] and len(missing) == 1, log
        assert "Traceback" not in log and "FileNotFoundError" not in log
        assert call(bus, "weather.slow", "2")["result"] == "done"

        # a broken edit is refused in one line; the running configuration stays
        write_config(conf, bus.port, {"execution": {"mode": "proccess"}})
        mark = len(server.output())
        refused = call(bus, "sys.reload")
        assert refused["error"]["code"] == -32000
        assert refused["error"]["message"] == (
            f"reload refused, nothing changed: [execution] mode in {conf}: Valid values are "
            "[thread, process], but found 'proccess'")
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.output()[mark:].count("reload refused") == 2, "the refused SIGHUP reload")
        assert "Traceback" not in server.output()[mark:]
        assert call(bus, "weather.sk", "2")["result"] == {"city": 2}  # still the previous configuration


def test_api_sighup_applies_a_new_auth_token(bus, tmp_path):
    with ApiProcess(tmp_path, bus.port, client_id=SERVER_CLIENT + 40) as api:
        assert api.request("GET", "/api/ipsc").status == 200
        sections = {"smartbus": {"connect_timeout": 5},
                    "api": {"listen_host": api.host, "listen_port": api.port, "unit_id": api.unit_id,
                            "client_id": api.client_id, "auth_token": "n3w-token", "listen_port_x": 1}}
        write_config(api.config_file, bus.port, sections, unit=SERVER_UNIT, client=SERVER_CLIENT)
        api.signal(signal.SIGHUP)
        wait_for(lambda: "configuration re-read" in api.output(), "the API's config reload")
        assert "changed: [api] auth_token '' -> '****'" in api.output()
        assert "n3w-token" not in api.output()
        assert "unknown option [api] listen_port_x" in api.output()
        assert api.request("GET", "/api/ipsc").status == 401
        assert api.request("GET", "/api/ipsc", headers={"Authorization": "Bearer n3w-token"}).status == 200
        assert api.proc.poll() is None


# ---------------------------------------------------------------------------- in-process pieces

def _conf(path: Path, text: str) -> cfg.ConfigOpts:
    path.write_text(text)
    return config.load(["--config-file", str(path)], "sbusr-server")


def test_executor_takes_the_new_values_at_reload(tmp_path):
    path = tmp_path / "sbusr.conf"
    conf = _conf(path, "[execution]\ncall_timeout = 30\n")
    reloader = config.Reloader(conf, "sbusr-server")
    threads = execution.create_executor(conf)
    # the master's settings alone (a real one owns a bus link and worker processes)
    master_settings = SimpleNamespace(max_tasks=0, call_timeout=30.0)
    path.write_text("[execution]\ncall_timeout = 2.5\nmax_tasks_per_child = 7\nworker_init = gc:collect\n")
    report = reloader.reload()
    assert report["changed"]["[execution] max_tasks_per_child"] == [0, 7]
    threads.reconfigure(conf)
    assert (threads.call_timeout, threads.worker_init) == (2.5, "gc:collect")
    Master.reconfigure(master_settings, conf)  # workers started after it read worker_init themselves
    assert (master_settings.max_tasks, master_settings.call_timeout) == (7, 2.5)


def test_notify_ttl_follows_a_reload(tmp_path):
    path = tmp_path / "sbusr.conf"
    conf = _conf(path, "[smartbus]\nnotify_ttl = 10000\n")
    reloader = config.Reloader(conf, "sbusr-server")
    connection = BusConnection(conf, ClientConfig("127.0.0.1", 1, unit_id=19, client_id=1))  # not started
    path.write_text("[smartbus]\nnotify_ttl = 2500\n")
    assert reloader.reload()["changed"] == {"[smartbus] notify_ttl": [10000, 2500]}
    assert connection._notify_ttl == 2500


def test_needs_restart_ignores_command_line_and_overrides(tmp_path):
    path = tmp_path / "sbusr.conf"
    path.write_text("[DEFAULT]\nexecutor_thread_pool_size = 64\n[execution]\nworkers = 4\n")
    conf = config.load(["--config-file", str(path), "--log-file", str(tmp_path / "x.log")], "sbusr-server")
    reloader = config.Reloader(conf, "sbusr-server")
    conf.set_override("executor_thread_pool_size", 100)  # what sbusr-server itself does
    path.write_text("[DEFAULT]\nexecutor_thread_pool_size = 64\nlog_file = /elsewhere.log\n"
                    "[execution]\nworkers = 6\n")
    report = reloader.reload()
    assert report["needs_restart"] == {"[execution] workers": [4, 6]}
    assert report["changed"] == {}
    assert opts.NAMESPACES == ("sbusr", "oslo.log", "oslo.messaging")


PROBE = '''
import os

import oslo_messaging

import reload_hooks


class Probe:
    target = oslo_messaging.Target(namespace="probe")

    def state(self, ctxt):
        return {"pid": os.getpid(), "hooked": reload_hooks.HOOKED}
'''
HOOKS = '''
HOOKED = None


def mark():
    global HOOKED
    HOOKED = "by worker_init"
'''


def test_process_workers_take_new_worker_init_and_recycling_at_reload(bus, tmp_path, monkeypatch):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "probe.py").write_text(PROBE)
    (tmp_path / "reload_hooks.py").write_text(HOOKS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # worker_init must be importable in the workers
    execution_opts = {"mode": "process", "workers": 1}
    conf = write_config(tmp_path / "sbusr.conf", bus.port, {"endpoints": {"directories": "methods"},
                                                            "execution": execution_opts})
    with ServerProcess(conf):
        first = call(bus, "probe.state")["result"]
        assert first["hooked"] is None
        assert call(bus, "probe.state")["result"]["pid"] == first["pid"]  # no recycling yet
        write_config(conf, bus.port, {"endpoints": {"directories": "methods"},
                                      "execution": {**execution_opts, "worker_init": "reload_hooks:mark",
                                                    "max_tasks_per_child": 2}})
        changed = call(bus, "sys.reload")["result"]["config"]["changed"]
        assert set(changed) == {"[execution] worker_init", "[execution] max_tasks_per_child"}
        states = [call(bus, "probe.state")["result"] for _ in range(5)]
        assert all(s["hooked"] == "by worker_init" for s in states), states  # the new generation ran it
        pids = [s["pid"] for s in states]
        assert first["pid"] not in pids
        assert pids[0] == pids[1] and pids[1] != pids[2] and pids[2] == pids[3] != pids[4], pids  # every 2
