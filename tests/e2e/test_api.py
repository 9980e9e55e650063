"""sbusr-api end to end: a real development bus, FakeIpsc stand-ins, the API as a real process.

The suite runs once per SmartBus client backend of the API (``native`` and ``vendor``).  The API
always runs as ``python -m sbusr.cmd.api`` (:class:`sbusr.testing.api_process.ApiProcess`): the vendor
library must never be loaded into the pytest process (one unit id per process, one start per
client id, an abort at interpreter exit), and both backends then run identical tests.

Tests that leave no state in the API share one process per backend (``api``); tests that need a
fresh peer table, other options, or stop the process start their own (``start_api``).  Every API
process gets a SmartBus identity never used before in the run, so no registration races the last
one's goodbye, and every one must exit 0 on SIGTERM.

Only the white-box leak checks of the native client's internal tables run in-process
(:class:`NativeInProcessTest`); the vendor runs check the same situations from outside.
Two vendor-library defects have tests of their workarounds: the library's -7 after a mode-1 flow
call (the vendor backend always calls with mode 0) and its refusal to NOTIFY non-IPSC clients (the
vendor backend sends the same NOTIFY bytes through SendData).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.testing import AsyncHTTPTestCase

from sbusr.api import app as api_app
from sbusr.api.bus import BusApi, make_transport
from sbusr.cmd import common
from sbusr.smartbus import codec
from sbusr.testing.api_process import API_UNIT, ApiProcess
from sbusr.testing.ipsc import FakeIpsc
from sbusr.testing.processes import BusProcess, free_port
from tests.helpers.server import SERVER_CLIENT, SERVER_UNIT, ServerProcess, write_config
from tests.helpers.vendorproc import vendor_unavailable

needs_vendor = pytest.mark.skipif(bool(vendor_unavailable()), reason=vendor_unavailable() or "")

WAIT = 10.0
API_OPTS: dict[str, Any] = {"flow_ack_timeout": 1, "flow_result_timeout": 2, "max_body_size": 16384,
                            "reset_timeout": 3}
ACK_DELAY = 0.03
# every API process (and in-process app) gets its own SmartBus client id for the whole run
_api_client_ids = itertools.count(2)


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Api:
    """Test-side view of one API process: JSON calls that check the error envelope."""

    def __init__(self, proc: ApiProcess) -> None:
        self.proc = proc

    @property
    def client_id(self) -> int:
        return self.proc.client_id

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        response = self.proc.request(method, path, data, headers)
        content_type = response.headers.get("Content-Type", "")
        assert content_type.startswith("application/json"), f"{method} {path}: not JSON: {content_type}"
        payload = response.json()
        if response.status >= 400 and path != "/health":  # /health's 503 is a status report, not an error
            assert payload["error"]["code"] == response.status, payload
            assert isinstance(payload["error"]["message"], str), payload
        return response.status, payload

    def flow(self, body: Any, query: str = "", **kw: Any) -> tuple[int, Any]:
        return self.call("POST", "/api/flow" + query, body, **kw)

    def known_ipsc(self, headers: dict[str, str] | None = None) -> set[tuple[int, int]]:
        code, payload = self.call("GET", "/api/ipsc", headers=headers)
        assert code == 200, payload
        return {(p["unit"], p["client"]) for p in payload["ipsc"]}

    def wait_ipsc(self, expected: set[tuple[int, int]], headers: dict[str, str] | None = None) -> None:
        wait_until(lambda: self.known_ipsc(headers) == expected, f"the API to see IPSCs {expected}")


class LaggingIpsc(FakeIpsc):
    """A FakeIpsc that handles each CALL_FLOW ACK_DELAY after it arrives, as an IPSC across a network.

    Why: libbusnetcli can lose a flow ack that comes back before RemoteInvokeFlow has entered the
    invoke id in its own wait table (seen live on a fresh process's first flow: the library traced
    the ack before its "InvokeRemoteFlow" line, never called the ack callback, and reported ack -25
    at the timeout).  A stand-in answering within a millisecond on loopback would make the vendor
    runs flaky for a reason no real deployment shows.
    """

    def _on_call_flow(self, packet: Any) -> None:
        self._later(ACK_DELAY, FakeIpsc._on_call_flow, self, packet)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bus() -> Iterator[BusProcess]:
    with BusProcess() as bus:
        yield bus


@pytest.fixture(scope="module", params=["native", pytest.param("vendor", marks=needs_vendor)])
def backend(request: pytest.FixtureRequest) -> str:
    """The whole suite runs once per SmartBus client backend of the API (and of sbusr-server)."""
    return request.param


@pytest.fixture
def start_api(bus: BusProcess, backend: str, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Start API processes; at the end each must stop on SIGTERM with exit code 0."""
    procs: list[ApiProcess] = []

    def start(api: dict[str, Any] | None = None, smartbus: dict[str, Any] | None = None,
              bus_port: int | None = None) -> Api:
        proc = ApiProcess(tmp_path, bus_port if bus_port is not None else bus.port, backend=backend,
                          client_id=next(_api_client_ids), api={**API_OPTS, **(api or {})}, smartbus=smartbus)
        procs.append(proc)
        return Api(proc.start())

    yield start
    failures = []
    for proc in procs:
        code = proc.stop()
        if code != 0:
            failures.append(f"sbusr-api ({proc.backend}) exited with {code}:\n{proc.output()[-3000:]}")
        proc.close()
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def shared_api(bus: BusProcess, backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One API process per backend for the tests that leave no state behind (it saves a start each)."""
    # reset_timeout also bounds /health's ping of the (absent) sbusr-server to 1 s
    proc = ApiProcess(tmp_path_factory.mktemp("api"), bus.port, backend=backend,
                      client_id=next(_api_client_ids), api={**API_OPTS, "reset_timeout": 1})
    with proc:
        yield Api(proc)
        code = proc.stop()
        assert code == 0, f"sbusr-api ({backend}) exited with {code}:\n{proc.output()[-3000:]}"


@pytest.fixture
def api(shared_api: Api) -> Api:
    """The shared API, once the previous test's IPSCs have left its peer table."""
    shared_api.wait_ipsc(set())
    return shared_api


@pytest.fixture
def ipscs(bus: BusProcess) -> Iterator[Callable[..., FakeIpsc]]:
    started: list[FakeIpsc] = []

    def start(unit: int = 0, process: int = 0) -> FakeIpsc:
        stand_in = LaggingIpsc(bus.host, bus.port, unit, process).start()
        started.append(stand_in)
        return stand_in

    yield start
    for stand_in in started:
        stand_in.stop()


# ---------------------------------------------------------------------------- flows


def test_flow_started_returns_ack_and_chosen_ipsc(backend, api, ipscs):
    stand_in = ipscs(3, 5)
    stand_in.on_flow("Flow1", message="started fine")
    api.wait_ipsc({(3, 5)})
    code, body = api.flow({"project": "Project1", "flow": "Flow1", "params": ["Hello", "中文"]})
    assert code == 200, body
    assert (body["server"], body["process"]) == (3, 5)
    assert (body["ack"], body["message"]) == (1, "started fine")
    assert "result" not in body
    [call] = stand_in.calls
    assert (call.project, call.flow, call.invoke_id) == ("Project1", "Flow1", body["invoke_id"])
    assert json.loads(call.params) == ["Hello", "中文"]
    assert call.mode == (1 if backend == "native" else 0)  # no result wanted (vendor: always 0, see below)
    assert (call.src.unit, call.src.client) == (API_UNIT, api.client_id)


def test_random_choice_honours_server_or_process(api, ipscs):
    stand_ins = [ipscs(0, 0), ipscs(0, 1), ipscs(1, 0)]
    api.wait_ipsc({(0, 0), (0, 1), (1, 0)})
    chosen = set()
    for _ in range(30):
        code, body = api.flow({"project": "P", "flow": "F"})
        assert code == 200, body
        chosen.add((body["server"], body["process"]))
    assert len(chosen) > 1, "30 flows all went to one IPSC: not random"
    assert chosen <= {(0, 0), (0, 1), (1, 0)}
    for _ in range(5):
        assert api.flow({"project": "P", "flow": "F", "server": 1})[1]["process"] == 0
        assert api.flow({"project": "P", "flow": "F", "process": 1})[1]["server"] == 0
    code, body = api.flow({"project": "P", "flow": "F", "server": 0, "process": 1})
    assert (code, body["server"], body["process"]) == (200, 0, 1)
    assert sum(len(s.calls) for s in stand_ins) == 41
    assert len(stand_ins[2].calls) >= 5
    assert len(stand_ins[1].calls) >= 6


def test_wait_returns_result_list(start_api, ipscs):
    api = start_api()  # fresh: see test_result_flow_after_a_fire_and_forget_flow
    stand_in = ipscs()
    stand_in.on_flow("Calc", result=[42, "done", {"k": "中"}], result_delay=0.2)
    api.wait_ipsc({(0, 0)})
    code, body = api.flow({"project": "P", "flow": "Calc", "params": [1, 2], "wait": True})
    assert code == 200, body
    assert body["result"] == [42, "done", {"k": "中"}]
    assert stand_in.calls[-1].mode == 0
    for query in ("?wait=1", "?wait"):
        code, body = api.flow({"project": "P", "flow": "Calc"}, query=query)
        assert (code, body.get("result")) == (200, [42, "done", {"k": "中"}]), query
    code, body = api.flow({"project": "P", "flow": "Calc"}, query="?wait=0")
    assert (code, "result" in body) == (200, False)
    code, body = api.flow({"project": "P", "flow": "Calc"}, query="?wait=maybe")
    assert code == 400, body


def test_result_that_never_comes_is_504(start_api, ipscs):
    api = start_api()
    stand_in = ipscs()
    stand_in.on_flow("NoResult", result=None)
    api.wait_ipsc({(0, 0)})
    code, body = api.flow({"project": "P", "flow": "NoResult", "wait": True})
    assert code == 504, body
    assert "result" in body["error"]["message"]


def test_error_ack_is_502_with_code_and_message(start_api, ipscs):
    api = start_api()
    stand_in = ipscs(2, 7)
    stand_in.on_flow("Missing", ack=-3, message="flow not found 中文")
    api.wait_ipsc({(2, 7)})
    code, body = api.flow({"project": "P", "flow": "Missing", "wait": True})
    assert code == 502, body
    assert body["error"]["ack"] == -3
    assert body["error"]["ack_message"] == "flow not found 中文"
    assert (body["error"]["server"], body["error"]["process"]) == (2, 7)


def test_result_flow_after_a_fire_and_forget_flow(backend, api, ipscs):
    """A flow with ``wait`` right after one without (the tests above each use a fresh API for this).

    libbusnetcli refuses the first mode-0 call after a mode-1 call with -7 although it sends it;
    the vendor backend therefore always calls with mode 0 and ignores an unwanted result.
    """
    stand_in = ipscs()
    stand_in.on_flow("Calc", result=["done"])
    api.wait_ipsc({(0, 0)})
    assert api.flow({"project": "P", "flow": "Calc"})[0] == 200
    code, body = api.flow({"project": "P", "flow": "Calc", "wait": True})
    assert (code, body.get("result")) == (200, ["done"]), body
    assert [call.mode for call in stand_in.calls] == ([1, 0] if backend == "native" else [0, 0])


def test_silent_ipsc_is_504_and_the_api_keeps_serving(api, ipscs):
    stand_in = ipscs()
    stand_in.on_flow("Slow", silent=True)
    api.wait_ipsc({(0, 0)})
    code, body = api.flow({"project": "P", "flow": "Slow"})
    assert code == 504, body
    assert len(stand_in.calls) == 1
    code, body = api.flow({"project": "P", "flow": "F"})
    assert (code, body["ack"]) == (200, 1), body


def test_no_ipsc_is_404(start_api, ipscs):
    api = start_api()  # a peer table that has never seen an IPSC
    code, body = api.flow({"project": "P", "flow": "F"})
    assert code == 404, body
    stand_in = ipscs(0, 0)
    api.wait_ipsc({(0, 0)})
    code, body = api.flow({"project": "P", "flow": "F", "server": 4})
    assert code == 404, body
    assert stand_in.calls == []


def test_ipsc_that_left_is_409(start_api, ipscs):
    api = start_api()  # a peer table that has seen only this IPSC
    stand_in = ipscs(5, 2)
    api.wait_ipsc({(5, 2)})
    stand_in.stop()
    api.wait_ipsc(set())
    code, body = api.flow({"project": "P", "flow": "F"})
    assert code == 409, body
    code, body = api.flow({"project": "P", "flow": "F", "server": 5, "process": 2})
    assert code == 409, body
    code, body = api.flow({"project": "P", "flow": "F", "server": 6})
    assert code == 404, body


def test_forged_global_connect_notices_do_not_fool_the_api(api, ipscs):
    real = ipscs(0, 1)
    api.wait_ipsc({(0, 1)})
    attacker = FakeIpsc(real.client.config.host, real.client.config.port, unit=9, process=9).start()
    try:
        everyone = codec.Address(-1, -1, -1)
        forged = [codec.GlobalConnect(0, 1, 2, 0, codec.GC_DISCONNECTED, ""),     # "IPSC 0/1 left"
                  codec.GlobalConnect(5, 9, 2, 0, codec.GC_CONNECTED, "ghost"),  # "5/9 joined"
                  codec.GlobalConnect(60, -127, 22, 0, 7, "")]                   # garbage
        for event in forged * 20:
            packet = codec.encode_global_connect(attacker.address, everyone, event)
            attacker.client.send_data(everyone, codec.CMD_GLOBAL_CONNECT, codec.CMDTYPE_SYSTEM,
                                      packet[codec.HEADER_SIZE:])
        # a later joiner becomes visible only after the bus passed on what the attacker sent earlier
        ipscs(0, 2)
        api.wait_ipsc({(0, 1), (0, 2), (9, 9)})
        code, body = api.call("GET", "/api/ipsc")
        assert code == 200 and {(p["unit"], p["client"]) for p in body["ipsc"]} == {(0, 1), (0, 2), (9, 9)}
        code, body = api.flow({"project": "P", "flow": "F", "server": 0, "process": 1})
        assert code == 200, body
        code, body = api.flow({"project": "P", "flow": "F", "server": 5, "process": 9})
        assert code == 404, body  # no ghost
    finally:
        attacker.stop()


# Every malformed request, one by one, is tests/unit/test_api_requests.py (in-process, the bus side a
# stand-in); here a few through the real process and bus, which must answer them and keep serving.
DEEP_BODY = b'{"project": "P", "flow": "F", "params": ' + b"[" * 7000 + b"]" * 7000 + b"}"


def test_malformed_bodies_are_4xx_and_the_api_keeps_serving(api, ipscs):
    stand_in = ipscs()
    api.wait_ipsc({(0, 0)})
    # 7,000 levels (14 KB, within max_body_size): the C scanner's RecursionError must be a 400
    for raw, needle in ((DEEP_BODY, "nested more than 32"), (b"not json", "JSON"),
                        ('{"project": "\u4e2d", "flow": "F"}'.encode("gbk"), "UTF-8")):
        code, body = api.flow(None, raw=raw)
        assert code == 400, (raw[:80], body)
        assert needle in body["error"]["message"], raw[:80]
    code, body = api.flow({"project": "P", "flow": "中" * 16})
    assert code == 400 and "31" in body["error"]["message"], body
    assert stand_in.calls == [], "an invalid request reached the IPSC"
    assert "Traceback" not in api.proc.output() and "RecursionError" not in api.proc.output()
    # the longest names that fit, and JSON sent with another content type, are accepted
    code, body = api.flow({"project": "P" * 31, "flow": "中" * 15}, headers={"Content-Type": "text/plain"})
    assert code == 200, body
    assert (stand_in.calls[-1].project, stand_in.calls[-1].flow) == ("P" * 31, "中" * 15)


def test_oversized_body_is_413(api, ipscs):
    stand_in = ipscs()
    api.wait_ipsc({(0, 0)})
    huge = json.dumps({"project": "P", "flow": "F", "params": ["x" * 17000]}).encode()
    code, body = api.flow(None, raw=huge)
    assert code == 413, body
    code, body = api.call("POST", "/sys/reset", raw=b"x" * 17000)
    assert code == 413, body
    assert stand_in.calls == []
    assert api.flow({"project": "P", "flow": "F"})[0] == 200


def test_ipsc_list_and_health(api, ipscs):
    ipscs(0, 0)
    ipscs(9, 3)
    api.wait_ipsc({(0, 0), (9, 3)})
    code, body = api.call("GET", "/api/ipsc")
    entry = next(p for p in body["ipsc"] if p["unit"] == 9)
    assert (entry["type"], entry["add_info"]) == (codec.CLIENT_TYPE_IPSC, "fake-ipsc-9-3")
    code, body = api.call("GET", "/health")
    assert code == 200, body
    assert body["status"] == "ok"
    assert body["bus"]["connected"] is True
    assert body["bus"]["ipsc"] == 2
    assert (body["bus"]["address"]["unit"], body["bus"]["address"]["client"]) == (API_UNIT, api.client_id)
    # no sbusr-server runs on this bus
    assert body["server"]["address"] == f"{SERVER_UNIT}:{SERVER_CLIENT}"
    assert body["server"]["reachable"] is False
    # the access log line is written once the response is sent: the client can be faster
    wait_until(lambda: "GET /health 200" in api.proc.output(), "the access log line")


def test_reset_without_server_is_504(api):
    code, body = api.call("GET", "/sys/reset")
    assert code == 504, body


def test_client_that_disconnects_early_does_not_hurt(api, ipscs):
    """The abandoned request ends (499 in the access log); the API keeps serving flows and health."""
    stand_in = ipscs()
    stand_in.on_flow("Slow", silent=True)
    api.wait_ipsc({(0, 0)})
    log_mark = len(api.proc.output())
    body = json.dumps({"project": "P", "flow": "Slow"}).encode()
    with socket.create_connection((api.proc.host, api.proc.port), timeout=10) as sock:
        sock.sendall(b"POST /api/flow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        wait_until(lambda: stand_in.calls, "the flow to reach the IPSC")
    wait_until(lambda: "POST /api/flow 499 " in api.proc.output()[log_mark:], "the abandoned request to end")
    code, answer = api.flow({"project": "P", "flow": "F"})
    assert (code, answer["ack"]) == (200, 1), answer
    assert api.call("GET", "/health")[1]["bus"]["connected"] is True


def test_token_required_except_health(start_api, ipscs):
    """The token from the config file; every route and header form is tests/unit/test_api_requests.py."""
    api = start_api({"auth_token": "s3cret-token"})
    ipscs()
    for headers in (None, {"Authorization": "Bearer wrong"}):
        for method, path in (("POST", "/api/flow"), ("GET", "/api/ipsc"), ("GET", "/sys/reset")):
            response = api.proc.request(method, path, headers=headers,
                                        body=b'{"project": "P", "flow": "F"}' if method == "POST" else None)
            assert response.status == 401, (method, path, headers)
            assert "Bearer" in response.headers.get("WWW-Authenticate", "")
            assert response.json()["error"]["code"] == 401
    code, body = api.call("GET", "/health")
    assert code == 200, body
    good = {"Authorization": "Bearer s3cret-token"}
    api.wait_ipsc({(0, 0)}, headers=good)
    code, body = api.flow({"project": "P", "flow": "F"}, headers=good)
    assert code == 200, body


def test_no_bus_health_503_and_flow_503(start_api):
    """Nothing listens at the transport URL: /health and flow starts say 503."""
    api = start_api(smartbus={"connect_timeout": 0.2}, bus_port=free_port())
    code, body = api.call("GET", "/health")
    assert code == 503, body
    assert body["status"] == "unavailable"
    assert body["bus"]["connected"] is False
    assert body["server"]["reachable"] is False
    code, body = api.flow({"project": "P", "flow": "F", "server": 0})
    assert code == 503, body


def test_sigterm_answers_the_request_in_flight_then_exits_0(start_api, ipscs):
    api = start_api()
    stand_in = ipscs()
    stand_in.on_flow("Slow", silent=True)
    api.wait_ipsc({(0, 0)})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(api.flow, {"project": "P", "flow": "Slow"})
        wait_until(lambda: stand_in.calls, "the flow to reach the IPSC")
        api.proc.signal(signal.SIGTERM)
        code, body = pending.result(20)
    assert code == 504, body  # answered, not cut off
    assert api.proc.wait(20) == 0
    assert api.proc.try_request("GET", "/health") is None  # no longer listening
    output = api.proc.output()
    assert "POST /api/flow 504" in output
    assert "signal SIGTERM: stopping" in output


# ---------------------------------------------------------------------------- /sys/reset


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


def _server_conf(bus: BusProcess, folder: Path, backend: str) -> tuple[Path, Path]:
    """sbusr-server's config and its endpoint folder (holding ENDPOINT_V1)."""
    endpoints = folder / "endpoints"
    endpoints.mkdir()
    (endpoints / "greeter.py").write_text(ENDPOINT_V1)
    conf = write_config(folder / "server.conf", bus.port, {"endpoints": {"directories": [endpoints]},
                                                          "smartbus": {"backend": backend}})
    return conf, endpoints


def test_reset_reloads_edited_endpoints(bus, start_api, ipscs, tmp_path):
    """/sys/reset against a real sbusr-server whose endpoint file is edited.

    The server runs on the native backend in both runs: a vendor-backed server cannot answer
    the API at all (see test_reset_against_vendor_backed_server).
    """
    conf, endpoints = _server_conf(bus, tmp_path, "native")
    with ServerProcess(conf) as server:
        api = start_api({"reset_timeout": 15})
        caller = ipscs(0, 9)

        def rpc(method: str, params: list[Any]) -> Any:
            request = {"jsonrpc": "2.0", "id": f"t{time.time_ns()}", "method": method, "params": params}
            return caller.call_rpc(SERVER_UNIT, SERVER_CLIENT, request, 10)

        assert rpc("greet.hello", ["bob"])["result"] == "v1 hello bob"
        (endpoints / "greeter.py").write_text(ENDPOINT_V2)
        code, body = api.call("GET", "/sys/reset")
        assert code == 200, (body, server.output())
        assert body["server"] == f"{SERVER_UNIT}:{SERVER_CLIENT}"
        assert "greet.bye" in json.dumps(body["reloaded"])
        assert rpc("greet.hello", ["bob"])["result"] == "v2 hi bob"
        assert rpc("greet.bye", [])["result"] == "v2 bye"
        (endpoints / "greeter.py").write_text(ENDPOINT_V1)
        code, body = api.call("POST", "/sys/reset")
        assert code == 200, body
        assert rpc("greet.hello", ["bob"])["result"] == "v1 hello bob"
        assert "error" in rpc("greet.bye", [])
        code, body = api.call("GET", "/health")
        assert code == 200, body
        assert body["server"]["reachable"] is True, body


@needs_vendor
def test_reset_against_vendor_backed_server(bus, tmp_path):
    """``[smartbus] backend = vendor`` in the config server and API share (runs once: vendor API).

    libbusnetcli's SendNotify only reaches IPSCs, so the vendor backend sends the server's reply to
    the API (a net client) as the same NOTIFY bytes through SendData.
    """
    conf, _ = _server_conf(bus, tmp_path, "vendor")
    with ServerProcess(conf) as server, ApiProcess(tmp_path, bus.port, backend="vendor",
                                                   client_id=next(_api_client_ids),
                                                   api={**API_OPTS, "reset_timeout": 3}) as proc:
        code, body = Api(proc).call("GET", "/sys/reset")
        assert code == 200, (body, server.output()[-2000:])


# ---------------------------------------------------------------------------- native, in-process


@pytest.fixture(scope="class")
def _class_bus(request: pytest.FixtureRequest, bus: BusProcess) -> None:
    request.cls.bus = bus


@pytest.mark.usefixtures("_class_bus")
class NativeInProcessTest(AsyncHTTPTestCase):
    """White-box leak checks: the app in this process on the native backend, reading its internals.

    The vendor backend cannot run in the pytest process; its runs check the same situations from
    outside (the API answers and keeps serving: test_silent_ipsc_is_504_and_the_api_keeps_serving,
    test_client_that_disconnects_early_does_not_hurt).
    """

    bus: BusProcess

    def setUp(self) -> None:
        self.ipscs: list[FakeIpsc] = []
        self.tmpdir = Path(self.enterContext(tempfile.TemporaryDirectory(prefix="sbusr-api-test-")))
        path = write_config(self.tmpdir / "api.conf", self.bus.port, {
            "smartbus": {"connect_timeout": 5},
            "api": {**API_OPTS, "unit_id": API_UNIT, "client_id": next(_api_client_ids)}})
        self.conf = common.prepare(["--config-file", str(path)], "test-sbusr-api")
        self.transport = make_transport(self.conf)
        self.bus_api = BusApi(self.conf, self.transport)
        super().setUp()
        self.bus_api.connect()

    def tearDown(self) -> None:
        try:
            super().tearDown()
        finally:
            for stand_in in self.ipscs:
                stand_in.stop()
            self.bus_api.close()
            self.transport.cleanup()

    def get_app(self) -> Any:
        return api_app.make_app(self.bus_api)

    def get_httpserver_options(self) -> dict[str, Any]:
        return api_app.server_options(self.conf)

    def get_async_test_timeout(self) -> float:
        return 30.0

    def _silent_ipsc(self) -> FakeIpsc:
        stand_in = FakeIpsc("127.0.0.1", self.bus.port, 0, 0).start()
        self.ipscs.append(stand_in)
        stand_in.on_flow("Slow", silent=True)
        wait_until(lambda: self._known_ipsc() == {(0, 0)}, "the API to see the IPSC")
        return stand_in

    def _known_ipsc(self) -> set[tuple[int, int]]:
        response = self.fetch("/api/ipsc")
        return {(p["unit"], p["client"]) for p in json.loads(response.body)["ipsc"]}

    def _flow(self, flow: str) -> int:
        return self.fetch("/api/flow", method="POST", body=json.dumps({"project": "P", "flow": flow}),
                          raise_error=False, request_timeout=20).code

    def _pending_flows(self) -> int:
        # the native client's table of flows waiting for an ack or a result
        return self.transport._driver.connection.client.client.pending_flows

    def test_silent_ipsc_leaves_no_pending_flow(self):
        stand_in = self._silent_ipsc()
        self.assertEqual(self._flow("Slow"), 504)
        self.assertEqual(len(stand_in.calls), 1)
        self.assertEqual(self._pending_flows(), 0)
        self.assertEqual(self.bus_api.in_flight, 0)

    def test_client_that_disconnects_leaves_nothing_pending(self):
        stand_in = self._silent_ipsc()
        body = json.dumps({"project": "P", "flow": "Slow"}).encode()
        sock = socket.create_connection(("127.0.0.1", self.get_http_port()))
        with self.assertLogs("sbusr.api.access", "INFO") as logs:
            sock.sendall(b"POST /api/flow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            wait_until(lambda: self._known_ipsc() and stand_in.calls, "the flow to reach the IPSC")
            sock.close()
            wait_until(lambda: self._known_ipsc() and any(" 499 " in line for line in logs.output),
                       "the abandoned request to end")
        self.assertEqual(self.bus_api.in_flight, 0)
        self.assertEqual(self._pending_flows(), 0)
        self.assertEqual(self._flow("F"), 200)

