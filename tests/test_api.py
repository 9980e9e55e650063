"""sbusr-api against a real development bus (subprocess) with FakeIpsc stand-ins.

The application runs in-process (Tornado's AsyncHTTPTestCase) on a real smartbus transport with its
own SmartBus identity; /sys/reset talks to a real ``sbusr-server`` subprocess.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oslo_config import cfg
from tornado.testing import AsyncHTTPTestCase

from sbusr import api
from sbusr.cmd import common
from sbusr.smartbus import codec
from tests.helpers.busproc import BusProcess, free_port
from tests.helpers.ipsc import FakeIpsc

WAIT = 10.0
SERVER_UNIT, SERVER_CLIENT = 19, 1
# every app instance gets its own SmartBus client id, so a re-registration never races the last one
_api_client_ids = itertools.count(2)


def write_conf(path: Path, bus_port: int, api_opts: dict[str, Any] | None = None,
               extra: str = "") -> Path:
    lines = ["[DEFAULT]",
             f"transport_url = smartbus://127.0.0.1:{bus_port}/?unit_id={SERVER_UNIT}&client_id={SERVER_CLIENT}",
             "[smartbus]", "connect_timeout = 5", "[api]"]
    lines += [f"{key} = {value}" for key, value in (api_opts or {}).items()]
    path.write_text("\n".join(lines) + "\n" + textwrap.dedent(extra))
    return path


def make_conf(path: Path) -> cfg.ConfigOpts:
    return common.prepare(["--config-file", str(path)], "test-sbusr-api")


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class ApiTestCase(AsyncHTTPTestCase):
    """One bus per class; a fresh app, transport and API identity per test."""

    api_opts: dict[str, Any] = {"flow_ack_timeout": 1, "flow_result_timeout": 2, "max_body_size": 16384,
                                "reset_timeout": 3}
    bus: BusProcess
    tmpdir: Path

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.tmpdir = Path(tempfile.mkdtemp(prefix="sbusr-api-test-"))
        cls.bus = BusProcess().start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.bus.stop()
        shutil.rmtree(cls.tmpdir, ignore_errors=True)
        super().tearDownClass()

    def setUp(self) -> None:
        self.ipscs: list[FakeIpsc] = []
        opts = {"client_id": next(_api_client_ids), **self.api_opts}
        self.conf = make_conf(write_conf(self.tmpdir / f"{self.id()}.conf", self.bus.port, opts))
        self.transport = api.make_transport(self.conf)
        super().setUp()
        self.bus_api: api.BusApi = self._app.settings["sbusr_api"]
        self.bus_api.connect()

    def tearDown(self) -> None:
        try:
            super().tearDown()
        finally:
            for ipsc in self.ipscs:
                ipsc.stop()
            self.bus_api.close()
            self.transport.cleanup()

    def get_app(self) -> Any:
        return api.make_app(self.conf, self.transport)

    def get_httpserver_options(self) -> dict[str, Any]:
        return api.server_options(self.conf)

    def get_async_test_timeout(self) -> float:
        return 30.0

    # ------------------------------------------------------------------ helpers

    def ipsc(self, unit: int = 0, process: int = 0) -> FakeIpsc:
        stand_in = FakeIpsc("127.0.0.1", self.bus.port, unit, process).start()
        self.ipscs.append(stand_in)
        return stand_in

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is None and method == "POST":
            data = b""
        response = self.fetch(path, method=method, body=data, headers=headers, raise_error=False,
                              request_timeout=20)
        self.assertTrue(response.headers.get("Content-Type", "").startswith("application/json"),
                        f"{method} {path}: not JSON: {response.headers.get('Content-Type')}")
        payload = json.loads(response.body) if response.body else None
        if response.code >= 400:
            self.assertEqual(payload["error"]["code"], response.code, payload)
            self.assertIsInstance(payload["error"]["message"], str)
        return response.code, payload

    def flow(self, body: Any, query: str = "", **kw: Any) -> tuple[int, Any]:
        return self.call("POST", "/api/flow" + query, body, **kw)

    def known_ipsc(self) -> set[tuple[int, int]]:
        code, payload = self.call("GET", "/api/ipsc")
        self.assertEqual(code, 200, payload)
        return {(p["unit"], p["client"]) for p in payload["ipsc"]}

    def wait_ipsc(self, expected: set[tuple[int, int]]) -> None:
        wait_until(lambda: self.known_ipsc() == expected, f"the API to see IPSCs {expected}")


class FlowTest(ApiTestCase):
    def test_flow_started_returns_ack_and_chosen_ipsc(self):
        stand_in = self.ipsc(3, 5)
        stand_in.on_flow("Flow1", message="started fine")
        self.wait_ipsc({(3, 5)})
        code, body = self.flow({"project": "Project1", "flow": "Flow1", "params": ["Hello", "中文"]})
        self.assertEqual(code, 200, body)
        self.assertEqual((body["server"], body["process"]), (3, 5))
        self.assertEqual((body["ack"], body["message"]), (1, "started fine"))
        self.assertNotIn("result", body)
        [call] = stand_in.calls
        self.assertEqual((call.project, call.flow, call.invoke_id), ("Project1", "Flow1", body["invoke_id"]))
        self.assertEqual(json.loads(call.params), ["Hello", "中文"])
        self.assertEqual(call.mode, 1)  # no result wanted
        self.assertEqual((call.src.unit, call.src.client), (SERVER_UNIT, self.conf.api.client_id))

    def test_random_choice_honours_server_or_process(self):
        stand_ins = [self.ipsc(0, 0), self.ipsc(0, 1), self.ipsc(1, 0)]
        self.wait_ipsc({(0, 0), (0, 1), (1, 0)})
        chosen = set()
        for _ in range(30):
            code, body = self.flow({"project": "P", "flow": "F"})
            self.assertEqual(code, 200, body)
            chosen.add((body["server"], body["process"]))
        self.assertGreater(len(chosen), 1, "30 flows all went to one IPSC: not random")
        self.assertLessEqual(chosen, {(0, 0), (0, 1), (1, 0)})
        for _ in range(5):
            self.assertEqual(self.flow({"project": "P", "flow": "F", "server": 1})[1]["process"], 0)
            self.assertEqual(self.flow({"project": "P", "flow": "F", "process": 1})[1]["server"], 0)
        code, body = self.flow({"project": "P", "flow": "F", "server": 0, "process": 1})
        self.assertEqual((code, body["server"], body["process"]), (200, 0, 1))
        self.assertEqual(sum(len(s.calls) for s in stand_ins), 41)
        self.assertGreaterEqual(len(stand_ins[2].calls), 5)
        self.assertGreaterEqual(len(stand_ins[1].calls), 6)

    def test_wait_returns_result_list(self):
        stand_in = self.ipsc()
        stand_in.on_flow("Calc", result=[42, "done", {"k": "中"}], result_delay=0.2)
        self.wait_ipsc({(0, 0)})
        code, body = self.flow({"project": "P", "flow": "Calc", "params": [1, 2], "wait": True})
        self.assertEqual(code, 200, body)
        self.assertEqual(body["result"], [42, "done", {"k": "中"}])
        self.assertEqual(stand_in.calls[-1].mode, 0)
        code, body = self.flow({"project": "P", "flow": "Calc"}, query="?wait=1")
        self.assertEqual((code, body.get("result")), (200, [42, "done", {"k": "中"}]))
        code, body = self.flow({"project": "P", "flow": "Calc"}, query="?wait")
        self.assertEqual((code, body.get("result")), (200, [42, "done", {"k": "中"}]))
        code, body = self.flow({"project": "P", "flow": "Calc"}, query="?wait=0")
        self.assertEqual((code, "result" in body), (200, False))
        code, body = self.flow({"project": "P", "flow": "Calc"}, query="?wait=maybe")
        self.assertEqual(code, 400, body)

    def test_result_that_never_comes_is_504(self):
        stand_in = self.ipsc()
        stand_in.on_flow("NoResult", result=None)
        self.wait_ipsc({(0, 0)})
        code, body = self.flow({"project": "P", "flow": "NoResult", "wait": True})
        self.assertEqual(code, 504, body)
        self.assertIn("result", body["error"]["message"])

    def test_error_ack_is_502_with_code_and_message(self):
        stand_in = self.ipsc(2, 7)
        stand_in.on_flow("Missing", ack=-3, message="flow not found 中文")
        self.wait_ipsc({(2, 7)})
        code, body = self.flow({"project": "P", "flow": "Missing", "wait": True})
        self.assertEqual(code, 502, body)
        self.assertEqual(body["error"]["ack"], -3)
        self.assertEqual(body["error"]["ack_message"], "flow not found 中文")
        self.assertEqual((body["error"]["server"], body["error"]["process"]), (2, 7))

    def test_silent_ipsc_is_504(self):
        stand_in = self.ipsc()
        stand_in.on_flow("Slow", silent=True)
        self.wait_ipsc({(0, 0)})
        code, body = self.flow({"project": "P", "flow": "Slow"})
        self.assertEqual(code, 504, body)
        self.assertEqual(len(stand_in.calls), 1)
        self.assertEqual(self._pending_flows(), 0)

    def test_no_ipsc_is_404(self):
        code, body = self.flow({"project": "P", "flow": "F"})
        self.assertEqual(code, 404, body)
        stand_in = self.ipsc(0, 0)
        self.wait_ipsc({(0, 0)})
        code, body = self.flow({"project": "P", "flow": "F", "server": 4})
        self.assertEqual(code, 404, body)
        self.assertEqual(stand_in.calls, [])

    def test_ipsc_that_left_is_409(self):
        stand_in = self.ipsc(5, 2)
        self.wait_ipsc({(5, 2)})
        stand_in.stop()
        self.wait_ipsc(set())
        code, body = self.flow({"project": "P", "flow": "F"})
        self.assertEqual(code, 409, body)
        code, body = self.flow({"project": "P", "flow": "F", "server": 5, "process": 2})
        self.assertEqual(code, 409, body)
        code, body = self.flow({"project": "P", "flow": "F", "server": 6})
        self.assertEqual(code, 404, body)

    def test_malformed_bodies_are_4xx_and_the_app_keeps_serving(self):
        stand_in = self.ipsc()
        self.wait_ipsc({(0, 0)})
        bad: list[tuple[bytes, str]] = [
            (b"", "empty"),
            (b"not json", "JSON"),
            (b"[1, 2]", "object"),
            (b'"text"', "object"),
            (b'{"project": "P", "flow": "F", "params": [NaN]}', "JSON"),
            ('{"project": "\u4e2d", "flow": "F"}'.encode("gbk"), "UTF-8"),
            (b"\xff\xfe{}", "UTF-8"),
        ]
        for raw, needle in bad:
            code, body = self.flow(None, raw=raw)
            self.assertEqual(code, 400, (raw, body))
            self.assertIn(needle, body["error"]["message"], raw)
        wrong: list[tuple[dict[str, Any], str]] = [
            ({"flow": "F"}, "project"),
            ({"project": "", "flow": "F"}, "project"),
            ({"project": 1, "flow": "F"}, "project"),
            ({"project": "P", "flow": ["F"]}, "flow"),
            ({"project": "P", "flow": "F", "server": 16}, "server"),
            ({"project": "P", "flow": "F", "server": "0"}, "server"),
            ({"project": "P", "flow": "F", "server": True}, "server"),
            ({"project": "P", "flow": "F", "process": -1}, "process"),
            ({"project": "P", "flow": "F", "process": 1.5}, "process"),
            ({"project": "P", "flow": "F", "params": "x"}, "params"),
            ({"project": "P", "flow": "F", "params": {"a": 1}}, "params"),
            ({"project": "P", "flow": "F", "params": ["x" * 9000]}, "params"),
            ({"project": "P", "flow": "F", "wait": "yes"}, "wait"),
            ({"project": "P", "flow": "F", "priority": 1}, "priority"),
            ({"project": "P" * 32, "flow": "F"}, "31"),
            ({"project": "P", "flow": "中" * 16}, "31"),
            ({"project": "P", "flow": "F\u20acx" * 11}, "flow"),
            ({"project": "P\x00", "flow": "F"}, "NUL"),
        ]
        for request, needle in wrong:
            code, body = self.flow(request)
            self.assertEqual(code, 400, (request, body))
            self.assertIn(needle, body["error"]["message"], request)
        self.assertEqual(stand_in.calls, [], "an invalid request reached the IPSC")
        # the longest names that fit, and JSON sent with another content type, are accepted
        code, body = self.flow({"project": "P" * 31, "flow": "中" * 15},
                               headers={"Content-Type": "text/plain"})
        self.assertEqual(code, 200, body)
        self.assertEqual((stand_in.calls[-1].project, stand_in.calls[-1].flow), ("P" * 31, "中" * 15))

    def test_oversized_body_is_413(self):
        stand_in = self.ipsc()
        self.wait_ipsc({(0, 0)})
        huge = json.dumps({"project": "P", "flow": "F", "params": ["x" * 17000]}).encode()
        code, body = self.flow(None, raw=huge)
        self.assertEqual(code, 413, body)
        code, body = self.call("POST", "/sys/reset", raw=b"x" * 17000)
        self.assertEqual(code, 413, body)
        # a chunked body (no Content-Length) over the limit is refused as well
        status = self.io_loop.run_sync(lambda: asyncio.get_running_loop().run_in_executor(
            None, _raw_chunked_post, self.get_http_port(), "/api/flow", b"y" * 17000))
        self.assertIn(status, (400, 413))
        self.assertEqual(stand_in.calls, [])
        self.assertEqual(self.flow({"project": "P", "flow": "F"})[0], 200)

    def test_unknown_route_and_method_are_json(self):
        code, body = self.call("GET", "/nope")
        self.assertEqual(code, 404, body)
        self.assertIn("/nope", body["error"]["message"])
        code, body = self.call("GET", "/api/flow")
        self.assertEqual(code, 405, body)
        code, body = self.call("DELETE", "/api/ipsc")
        self.assertEqual(code, 405, body)

    def test_ipsc_list_and_health(self):
        self.ipsc(0, 0)
        self.ipsc(9, 3)
        self.wait_ipsc({(0, 0), (9, 3)})
        code, body = self.call("GET", "/api/ipsc")
        entry = next(p for p in body["ipsc"] if p["unit"] == 9)
        self.assertEqual((entry["type"], entry["add_info"]), (codec.CLIENT_TYPE_IPSC, "fake-ipsc-9-3"))
        code, body = self.call("GET", "/health")
        self.assertEqual(code, 200, body)
        self.assertEqual(body["status"], "ok")
        self.assertIs(body["bus"]["connected"], True)
        self.assertEqual(body["bus"]["ipsc"], 2)
        self.assertEqual(body["bus"]["address"]["client"], self.conf.api.client_id)
        # no sbusr-server runs on this bus
        self.assertEqual(body["server"]["address"], f"{SERVER_UNIT}:{SERVER_CLIENT}")
        self.assertIs(body["server"]["reachable"], False)

    def test_reset_without_server_is_504(self):
        code, body = self.call("GET", "/sys/reset")
        self.assertEqual(code, 504, body)

    def test_client_that_disconnects_leaves_nothing_pending(self):
        stand_in = self.ipsc()
        stand_in.on_flow("Slow", silent=True)
        self.wait_ipsc({(0, 0)})
        body = json.dumps({"project": "P", "flow": "Slow"}).encode()
        sock = socket.create_connection(("127.0.0.1", self.get_http_port()))
        with self.assertLogs("sbusr.api.access", "INFO") as logs:
            sock.sendall(b"POST /api/flow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            wait_until(lambda: self.known_ipsc() and stand_in.calls, "the flow to reach the IPSC")
            sock.close()
            wait_until(lambda: self.known_ipsc() and any(" 499 " in line for line in logs.output),
                       "the abandoned request to end")
        self.assertEqual(self.bus_api.in_flight, 0)
        self.assertEqual(self._pending_flows(), 0)
        self.assertEqual(self.flow({"project": "P", "flow": "F"})[0], 200)

    def _pending_flows(self) -> int:
        # white-box: the native client's table of flows waiting for an ack or a result
        return self.transport._driver.connection.client.client.pending_flows


class AuthTest(ApiTestCase):
    api_opts = {**ApiTestCase.api_opts, "auth_token": "s3cret-token"}

    def test_token_required_except_health(self):
        self.ipsc()
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"},
                        {"Authorization": "s3cret-token"}):
            for method, path in (("POST", "/api/flow"), ("GET", "/api/ipsc"), ("GET", "/sys/reset"),
                                 ("POST", "/sys/reset"), ("GET", "/missing")):
                response = self.fetch(path, method=method, headers=headers, raise_error=False,
                                      body=b'{"project": "P", "flow": "F"}' if method == "POST" else None)
                self.assertEqual(response.code, 401, (method, path, headers))
                self.assertIn("Bearer", response.headers.get("WWW-Authenticate", ""))
                self.assertEqual(json.loads(response.body)["error"]["code"], 401)
        code, body = self.call("GET", "/health")
        self.assertEqual(code, 200, body)
        good = {"Authorization": "Bearer s3cret-token"}
        wait_until(lambda: self.call("GET", "/api/ipsc", headers=good)[1]["ipsc"], "the IPSC")
        code, body = self.flow({"project": "P", "flow": "F"}, headers=good)
        self.assertEqual(code, 200, body)


class NoBusTest(AsyncHTTPTestCase):
    """Nothing listens at the transport URL: /health and flow starts say 503."""

    def setUp(self) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="sbusr-api-nobus-"))
        path = write_conf(self.tmpdir / "sbusr.conf", free_port(), {"client_id": next(_api_client_ids)})
        path.write_text(path.read_text().replace("connect_timeout = 5", "connect_timeout = 0.2"))
        self.conf = make_conf(path)
        self.transport = api.make_transport(self.conf)
        super().setUp()
        self.bus_api: api.BusApi = self._app.settings["sbusr_api"]

    def tearDown(self) -> None:
        try:
            super().tearDown()
        finally:
            self.bus_api.close()
            self.transport.cleanup()
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def get_app(self) -> Any:
        return api.make_app(self.conf, self.transport)

    def get_async_test_timeout(self) -> float:
        return 30.0

    def test_health_503_and_flow_503(self):
        response = self.fetch("/health", raise_error=False)
        self.assertEqual(response.code, 503)
        body = json.loads(response.body)
        self.assertEqual(body["status"], "unavailable")
        self.assertIs(body["bus"]["connected"], False)
        self.assertIs(body["server"]["reachable"], False)
        response = self.fetch("/api/flow", method="POST", body=b'{"project": "P", "flow": "F", "server": 0}',
                              raise_error=False)
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(response.body)["error"]["code"], response.code)


ENDPOINT_V1 = """
import oslo_messaging

class Greeter:
    target = oslo_messaging.Target(namespace="greet")

    def hello(self, ctxt, name):
        return "v1 hello " + name
"""

ENDPOINT_V2 = ENDPOINT_V1.replace("v1 hello", "v2 hi") + """
    def bye(self, ctxt):
        return "v2 bye"
"""


class ResetTest(ApiTestCase):
    """/sys/reset against a real sbusr-server subprocess whose endpoint file is edited."""

    api_opts = {**ApiTestCase.api_opts, "reset_timeout": 15}

    def setUp(self) -> None:
        super().setUp()
        self.endpoints = self.tmpdir / f"endpoints-{self._testMethodName}"
        self.endpoints.mkdir()
        (self.endpoints / "greeter.py").write_text(ENDPOINT_V1)
        conf = write_conf(self.tmpdir / f"server-{self._testMethodName}.conf", self.bus.port,
                          extra=f"[endpoints]\ndirectories = {self.endpoints}\n")
        self.server_log = tempfile.TemporaryFile()
        self.server = subprocess.Popen([sys.executable, "-m", "sbusr.cmd.server", "--config-file", str(conf)],
                                       stdout=self.server_log, stderr=subprocess.STDOUT,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.caller = self.ipsc(0, 9)
        wait_until(lambda: self._rpc("greet.hello", ["a"], timeout=0.5), "sbusr-server to answer", 20)

    def tearDown(self) -> None:
        try:
            super().tearDown()
        finally:
            if self.server.poll() is None:
                self.server.send_signal(signal.SIGTERM)
                try:
                    self.server.wait(15)
                except subprocess.TimeoutExpired:
                    self.server.kill()
                    self.server.wait(5)
            self.server_log.close()

    def server_output(self) -> str:
        self.server_log.seek(0)
        return self.server_log.read().decode("utf-8", errors="replace")

    def _rpc(self, method: str, params: list[Any], timeout: float = 10.0) -> Any:
        if self.server.poll() is not None:
            raise AssertionError(f"sbusr-server exited with {self.server.returncode}:\n"
                                 f"{self.server_output()}")
        request = {"jsonrpc": "2.0", "id": f"t{time.time_ns()}", "method": method, "params": params}
        try:
            return self.caller.call_rpc(SERVER_UNIT, SERVER_CLIENT, request, timeout)
        except TimeoutError:
            return None

    def test_reset_reloads_edited_endpoints(self):
        self.assertEqual(self._rpc("greet.hello", ["bob"])["result"], "v1 hello bob")
        (self.endpoints / "greeter.py").write_text(ENDPOINT_V2)
        code, body = self.call("GET", "/sys/reset")
        self.assertEqual(code, 200, (body, self.server_output()))
        self.assertEqual(body["server"], f"{SERVER_UNIT}:{SERVER_CLIENT}")
        self.assertIn("greet.bye", json.dumps(body["reloaded"]))
        self.assertEqual(self._rpc("greet.hello", ["bob"])["result"], "v2 hi bob")
        self.assertEqual(self._rpc("greet.bye", [])["result"], "v2 bye")
        (self.endpoints / "greeter.py").write_text(ENDPOINT_V1)
        code, body = self.call("POST", "/sys/reset")
        self.assertEqual(code, 200, body)
        self.assertEqual(self._rpc("greet.hello", ["bob"])["result"], "v1 hello bob")
        self.assertIn("error", self._rpc("greet.bye", []))
        code, body = self.call("GET", "/health")
        self.assertEqual(code, 200, body)
        self.assertIs(body["server"]["reachable"], True, body)


class ConsoleScriptTest(ApiTestCase):
    """``python -m sbusr.cmd.api`` serves; on SIGTERM it answers the request in flight, then exits 0."""

    def test_module_serves_and_stops_gracefully(self):
        stand_in = self.ipsc()
        stand_in.on_flow("Slow", silent=True)
        port = free_port()
        conf = write_conf(self.tmpdir / "cli.conf", self.bus.port,
                          {"listen_port": port, "client_id": next(_api_client_ids), "flow_ack_timeout": 2})
        base = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryFile() as log, concurrent.futures.ThreadPoolExecutor(1) as pool:
            proc = subprocess.Popen([sys.executable, "-m", "sbusr.cmd.api", "--config-file", str(conf)],
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                health = wait_until(lambda: _get_json(base + "/health"), "sbusr-api to serve", 20)
                self.assertEqual(health[0], 200, health)
                self.assertIs(health[1]["bus"]["connected"], True)
                wait_until(lambda: _get_json(base + "/api/ipsc")[1]["ipsc"], "the API to see the IPSC")
                pending = pool.submit(_get_json, base + "/api/flow",
                                      json.dumps({"project": "P", "flow": "Slow"}).encode())
                wait_until(lambda: stand_in.calls, "the flow to reach the IPSC")
                proc.send_signal(signal.SIGTERM)
                code, body = pending.result(20)
                self.assertEqual(code, 504, body)  # answered, not cut off
                self.assertEqual(proc.wait(20), 0)
                self.assertIsNone(_get_json(base + "/health"))  # no longer listening
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(5)
                log.seek(0)
                output = log.read().decode(errors="replace")
        self.assertIn("GET /health 200", output)
        self.assertIn("POST /api/flow 504", output)


def _get_json(url: str, data: bytes | None = None) -> tuple[int, Any] | None:
    """GET (or POST ``data``) and parse the JSON answer; None when nothing listens."""
    try:
        with urllib.request.urlopen(url, data=data, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


def _raw_chunked_post(port: int, path: str, body: bytes) -> int:
    """POST with Transfer-Encoding: chunked; returns the status code (0 if the server just closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000])
                          for i in range(0, len(body), 1000))
        with contextlib.suppress(OSError):
            sock.sendall(head + chunks + b"0\r\n\r\n")
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
