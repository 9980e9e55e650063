"""Metrics and status data through a real stack: bus, sbusr-server, sbusr-api and an IPSC stand-in.

sbusr-server's /metrics (its own listener) and ``sys.stats``, in thread and process mode; sbusr-api's
/metrics and the status routes' authentication over plain HTTP (the page itself is tested in a
browser by ``test_status_page.py``).
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sbusr.testing.api_process import ApiProcess
from sbusr.testing.ipsc import FakeIpsc
from sbusr.testing.processes import BusProcess, free_port
from tests.helpers.browser import wait_until
from tests.helpers.server import SERVER_CLIENT, SERVER_UNIT, ServerProcess, write_config

TOKEN = "metrics-e2e-token"
IPSC_UNIT, IPSC_PROCESS = 2, 5
ENDPOINTS = textwrap.dedent('''
    import os

    import oslo_messaging

    from sbusr.jsonrpc.errors import RpcError


    class Shop:
        target = oslo_messaging.Target(namespace="shop")

        def price(self, ctxt, item):
            return {"item": item, "price": 3}

        def refuse(self, ctxt):
            raise RpcError(-32050, "out of stock")

        def crash(self, ctxt):
            os._exit(3)
''')
_client_ids = itertools.count(50)
_request_ids = itertools.count()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """One scrape, parsed with prometheus_client's parser: {(sample name, labels): value}."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def requests_total(got: Samples) -> dict[tuple[str, str], float]:
    return {(dict(labels)["method"], dict(labels)["outcome"]): value for (name, labels), value in got.items()
            if name == "sbusr_requests_total"}


def call(ipsc: FakeIpsc, method: str, *params: Any) -> dict[str, Any]:
    request = {"jsonrpc": "2.0", "id": f"m{next(_request_ids)}", "method": method, "params": list(params)}
    return ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, request, timeout=30)


@pytest.fixture(scope="module")
def bus() -> Iterator[BusProcess]:
    with BusProcess() as bus:
        yield bus


@pytest.fixture(scope="module")
def ipsc(bus: BusProcess) -> Iterator[FakeIpsc]:
    with FakeIpsc(bus.host, bus.port, IPSC_UNIT, IPSC_PROCESS) as ipsc:
        yield ipsc


def start_server(bus: BusProcess, folder: Path, name: str, **execution: Any) -> tuple[ServerProcess, int]:
    (folder / "shop.py").write_text(ENDPOINTS)
    port = free_port()
    conf = write_config(folder / f"{name}.conf", bus.port, {
        "endpoints": {"directories": [folder]},
        "execution": {"call_timeout": 10, **execution},
        "metrics": {"host": "127.0.0.1", "port": port},
    })
    return ServerProcess(conf).start(), port


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_server_metrics_and_sys_stats(bus: BusProcess, ipsc: FakeIpsc, tmp_path: Path, mode: str) -> None:
    server, port = start_server(bus, tmp_path, mode, mode=mode, workers=2)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        assert f"metrics on http://127.0.0.1:{port}/metrics" in server.output()
        assert call(ipsc, "shop.price", "tea")["result"] == {"item": "tea", "price": 3}
        assert call(ipsc, "shop.price", "milk")["result"]["item"] == "milk"
        assert call(ipsc, "shop.refuse")["error"]["code"] == -32050
        assert call(ipsc, "shop.nothing")["error"]["code"] == -32601
        assert call(ipsc, "exception", "boom")["error"]["code"] == -32000
        bad = ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, {"jsonrpc": "2.0", "id": "bad-1", "method": 42},
                            timeout=30)
        assert bad["error"]["code"] == -32600
        batch = ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, [
            {"jsonrpc": "2.0", "id": "b1", "method": "add", "params": [1, 2]},
            {"jsonrpc": "2.0", "id": "b2", "method": "add", "params": [1]},
            {"jsonrpc": "2.0", "method": "echo", "params": ["a notification: counted nowhere"]}], timeout=30)
        assert [r.get("result", r.get("error", {}).get("code")) for r in batch] == [3, -32602]

        got = scrape(url)
        assert requests_total(got) == {
            ("shop.price", "result"): 2, ("shop.refuse", "-32050"): 1, ("<unknown>", "-32601"): 1,
            ("exception", "-32000"): 1, ("<unknown>", "-32600"): 1, ("add", "result"): 1,
            ("add", "-32602"): 1,
        }
        price = (("method", "shop.price"),)
        assert got[("sbusr_request_duration_seconds_count", price)] == 2
        assert got[("sbusr_request_duration_seconds_bucket", (("le", "+Inf"), *price))] == 2
        assert 0 < got[("sbusr_request_duration_seconds_sum", price)] < 60
        assert got[("sbusr_requests_in_flight", ())] == 0 and got[("sbusr_requests_queued", ())] == 0
        assert got[("sbusr_bus_connected", ())] == 1 and got[("sbusr_ipsc_peers", ())] >= 1
        workers = {dict(labels)["state"]: v for (name, labels), v in got.items() if name == "sbusr_workers"}
        assert workers["idle"] + workers["busy"] + workers["starting"] == 2
        assert got[("process_resident_memory_bytes", ())] > 0  # prometheus_client's standard series

        stats = call(ipsc, "sys.stats")["result"]
        assert stats["mode"] == mode and stats["server"] == f"{SERVER_UNIT}:{SERVER_CLIENT}"
        assert stats["calls"] == 8 and stats["errors"] == 5  # sys.stats itself is still in flight
        rows = {row["method"]: row for row in stats["methods"]}
        assert rows["shop.price"]["calls"] == 2 and rows["shop.price"]["p50_ms"] > 0
        assert rows["<unknown>"]["minute"]["errors"] == {"-32601": 1, "-32600": 1}
        newest = stats["recent_errors"][0]
        caller = f"{IPSC_UNIT}:{IPSC_PROCESS}"
        assert (newest["method"], newest["code"], newest["caller"]) == ("add", -32602, caller)
        assert any(e["message"] == "out of stock" for e in stats["recent_errors"])
        assert len(stats["history"]["rate"]) >= 1 and sum(stats["history"]["rate"]) > 0
        assert stats["workers"]["idle"] + stats["workers"]["busy"] >= 1

        server.signal(signal.SIGHUP)  # a reload is counted (and in process mode replaces the workers)
        wait_until(lambda: scrape(url)[("sbusr_reloads_total", ())] == 1, "the reload to be counted")
        if mode == "process":
            got = scrape(url)
            assert got[("sbusr_worker_restarts_total", (("reason", "reload"),))] == 2
            assert call(ipsc, "shop.crash")["error"]["code"] == -32003
            wait_until(lambda: scrape(url)[("sbusr_worker_restarts_total", (("reason", "crash"),))] == 1,
                       "the crash to be counted")
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0, server.output()[-3000:]


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_metrics_port_taken_or_off_never_stops_the_server(bus: BusProcess, ipsc: FakeIpsc,
                                                          tmp_path: Path, mode: str) -> None:
    execution = {"mode": mode, "workers": 1}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "shop.py").write_text(ENDPOINTS)
        conf = write_config(tmp_path / "taken.conf", bus.port, {"endpoints": {"directories": [tmp_path]},
                                                                "metrics": {"port": port},
                                                                "execution": execution})
        with ServerProcess(conf) as server:
            assert call(ipsc, "shop.price", "x")["result"]["price"] == 3
            assert re.search(rf"metrics not served: cannot listen on 127\.0\.0\.1:{port}", server.output())
    conf = write_config(tmp_path / "off.conf", bus.port, {"metrics": {"port": 0}, "execution": execution})
    with ServerProcess(conf) as server:
        assert call(ipsc, "echo", "x")["result"] == "x"
        assert "metrics on" not in server.output() and "metrics not served" not in server.output()


# ---------------------------------------------------------------------------- sbusr-api


@pytest.fixture(scope="module")
def server(bus: BusProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc, _ = start_server(bus, tmp_path_factory.mktemp("api-server"), "api-server")
    yield proc
    proc.stop()


def start_api(bus: BusProcess, folder: Path, **api: Any) -> ApiProcess:
    return ApiProcess(folder, bus.port, client_id=next(_client_ids),
                      api={"flow_ack_timeout": 1, "reset_timeout": 3, **api}).start()


def http(api: ApiProcess, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    response = api.request(method, path, body, headers)
    return response.status, {k.lower(): v for k, v in response.headers.items()}, response.body


def test_api_metrics_need_no_token_unless_configured(bus: BusProcess, ipsc: FakeIpsc, server: ServerProcess,
                                                     tmp_path: Path) -> None:
    open_api = start_api(bus, tmp_path, auth_token=TOKEN)
    locked_api = start_api(bus, tmp_path, auth_token=TOKEN, metrics_need_token=True)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    try:
        ipsc.on_flow("Refused", ack=-1, message="no such flow")
        flows = [({"project": "P", "flow": "F"}, 200), ({"project": "P", "flow": "Refused"}, 502),
                 ({"project": "P", "flow": "F", "server": 9}, 404), ({"project": "P"}, 400)]
        for body, status in flows:
            code, _, payload = http(open_api, "POST", "/api/flow", json.dumps(body).encode(), bearer)
            assert code == status, payload
        assert http(open_api, "GET", "/api/ipsc")[0] == 401
        assert http(open_api, "GET", "/no/such/route", headers=bearer)[0] == 404

        got = scrape(f"{open_api.base_url}/metrics")  # no token needed
        flows_total = {dict(labels)["outcome"]: v for (name, labels), v in got.items()
                       if name == "sbusr_api_flows_total"}
        assert flows_total == {"started": 1, "refused": 1, "timeout": 0, "no_ipsc": 1, "not_connected": 0,
                               "unknown": 0, "busy": 0, "error": 0}
        assert got[("sbusr_api_flow_ack_seconds_count", ())] == 1
        routes = {(dict(labels)["route"], dict(labels)["status"]): v for (name, labels), v in got.items()
                  if name == "sbusr_api_requests_total"}
        for key in [("/api/flow", "200"), ("/api/flow", "502"), ("/api/flow", "404"), ("/api/flow", "400"),
                    ("/api/ipsc", "401"), ("<other>", "404")]:
            assert routes.get(key, 0) >= 1, (key, routes)
        assert got[("sbusr_bus_connected", ())] == 1 and got[("sbusr_ipsc_peers", ())] >= 1

        status, _, body = http(locked_api, "GET", "/metrics")
        assert status == 401 and json.loads(body)["error"]["code"] == 401
        locked = scrape(f"{locked_api.base_url}/metrics", bearer)
        assert ("sbusr_api_flows_total", (("outcome", "started"),)) in locked
    finally:
        open_api.close()
        locked_api.close()


def test_status_routes_log_in_once_and_keep_a_cookie(bus: BusProcess, ipsc: FakeIpsc, server: ServerProcess,
                                                     tmp_path: Path) -> None:
    api = start_api(bus, tmp_path, auth_token=TOKEN)
    try:
        status, headers, body = http(api, "GET", "/status")
        assert status == 401 and headers["content-type"].startswith("text/html") and b'name="token"' in body
        assert http(api, "GET", "/status/data")[0] == 401
        assert http(api, "GET", "/status?token=wrong")[0] == 401

        status, headers, _ = http(api, "GET", f"/status?token={TOKEN}")
        assert status == 303 and headers["location"] == "status"  # the token leaves the address at once
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert "Path=/status" in cookie  # the browser sends it to the status routes only
        jar = {"Cookie": cookie.split(";")[0]}

        status, headers, body = http(api, "GET", "/status", headers=jar)
        nonce = re.search(r"script-src 'nonce-([^']+)'", headers["content-security-policy"]).group(1)
        assert status == 200 and f'<script nonce="{nonce}">'.encode() in body and TOKEN.encode() not in body
        assert headers["cache-control"] == "no-store" and headers["referrer-policy"] == "no-referrer"

        call(ipsc, "shop.price", "bread")
        status, _, body = http(api, "GET", "/status/data", headers=jar)
        data = json.loads(body)
        assert status == 200 and data["bus"]["connected"] is True and data["api"]["auth"] is True
        assert {(p["unit"], p["client"]) for p in data["ipsc"]} >= {(IPSC_UNIT, IPSC_PROCESS)}
        assert data["server"]["reachable"] is True
        assert any(row["method"] == "shop.price" for row in data["server"]["stats"]["methods"])
        assert http(api, "GET", "/status/data", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200

        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, _, body = http(api, "POST", "/status/login", b"token=nope", form)
        assert status == 401 and b"not valid" in body
        status, headers, _ = http(api, "POST", "/status/login", f"token={TOKEN}".encode(), form)
        assert status == 303 and headers["location"] == "/status"
        relogin = {"Cookie": headers["set-cookie"].split(";")[0]}  # signed afresh: a timestamp of its own
        assert relogin["Cookie"].startswith("sbusr_status=") and "Path=/status" in headers["set-cookie"]
        assert http(api, "GET", "/status/data", headers=relogin)[0] == 200
        status, headers, _ = http(api, "GET", "/status/logout", headers=jar)
        assert status == 303 and 'sbusr_status=""' in headers["set-cookie"]
        api.stop()
        assert TOKEN not in api.output()  # never logged, not even as part of a path
    finally:
        api.close()


def test_status_data_without_a_server_or_a_token(bus: BusProcess, tmp_path: Path) -> None:
    """No auth_token: the page needs no login; a server that does not answer is reported, not an error."""
    api = start_api(bus, tmp_path, server_client_id=99)
    try:
        status, _, body = http(api, "GET", "/status")
        assert status == 200 and b"sbusr status" in body
        started = time.monotonic()
        status, _, body = http(api, "GET", "/status/data")
        data = json.loads(body)
        assert status == 200 and data["server"] == {"address": f"{SERVER_UNIT}:99", "reachable": False,
                                                    "stats": None, "error": data["server"]["error"]}
        assert data["server"]["error"] and time.monotonic() - started < 20
    finally:
        api.close()

