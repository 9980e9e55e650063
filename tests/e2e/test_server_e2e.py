"""sbusr-server end to end: a real bus process, a real server process, an IPSC stand-in calling it."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import queue
import signal
import textwrap
import threading
import time

import pytest

from sbusr.smartbus import codec
from sbusr.testing.ipsc import FakeIpsc
from sbusr.testing.processes import BusProcess
from sbusr.testing.waiting import wait_for
from tests.helpers.server import SERVER_CLIENT, SERVER_UNIT, ServerProcess, write_config
from tests.helpers.vendorproc import vendor_unavailable

needs_vendor = pytest.mark.skipif(bool(vendor_unavailable()), reason=vendor_unavailable() or "")

ENDPOINTS = textwrap.dedent('''
    import datetime
    import decimal
    import time

    import oslo_messaging


    class Weather:
        target = oslo_messaging.Target(namespace="weather")

        def sk(self, ctxt, code):
            return {"code": code, "source": ctxt["source"]}

        def _secret(self, ctxt):
            return "must never run"


    class Legacyish:
        target = oslo_messaging.Target(namespace="mymodule.MyClass")

        def mymethod(self, ctxt, path, text="ran"):
            with open(path, "a") as f:
                f.write(text + "\\n")
            return "written"

        def awkward(self, ctxt):
            return {"when": datetime.datetime(2026, 11, 21, 8, 30), "price": decimal.Decimal("1.50"),
                    "raw": b"bytes", "tags": {"b", "a"}}

        def slow(self, ctxt, seconds, started=None):
            if started:
                open(started, "w").close()
            time.sleep(seconds)
            return seconds
''')


@pytest.fixture(scope="module")
def bus():
    with BusProcess() as bus:
        yield bus


@pytest.fixture(scope="module", params=[
    ("native", "thread"), pytest.param(("vendor", "thread"), marks=needs_vendor),
    ("native", "process"), pytest.param(("vendor", "process"), marks=needs_vendor)],
    ids=lambda p: "-".join(p))
def flavour(request):
    """The whole suite runs once per SmartBus client backend and execution mode of the server."""
    return request.param


@pytest.fixture(scope="module")
def backend(flavour):
    return flavour[0]


@pytest.fixture(scope="module")
def server(bus, flavour, tmp_path_factory):
    backend, mode = flavour
    folder = tmp_path_factory.mktemp("endpoints")
    (folder / "mine.py").write_text(ENDPOINTS)
    conf = write_config(folder / "sbusr.conf", bus.port, {"endpoints": {"directories": [folder]},
                                                         "smartbus": {"backend": backend},
                                                         "execution": {"mode": mode, "workers": 2}})
    with ServerProcess(conf) as proc:
        yield proc


@pytest.fixture(scope="module")
def ipsc(bus, server):
    with FakeIpsc(bus.host, bus.port, unit=0, process=3) as fake:
        yield fake


def call(ipsc: FakeIpsc, method: str, params=None, request_id="1", **extra):
    request = {"jsonrpc": "2.0", "id": request_id, "method": method, **extra}
    if params is not None:
        request["params"] = params
    return ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, request)


def drain(q: queue.Queue) -> list:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


_markers = itertools.count()


def titles_until_marker(ipsc: FakeIpsc) -> list[str]:
    """The titles of the replies ``ipsc`` got before the reply to a marker call made now: a reply the
    server sent for anything earlier is among them (one server answers in order of what it handled)."""
    marker = f"marker-{next(_markers)}"
    assert call(ipsc, "echo", [marker], marker)["result"] == marker
    titles = []
    while (title := ipsc.notifies.get(timeout=60).title) != marker:
        titles.append(title)
    return titles


def test_builtin_methods_positional_and_named(ipsc):
    assert call(ipsc, "echo", ["Hello"], "123456") == {"jsonrpc": "2.0", "id": "123456", "result": "Hello"}
    assert call(ipsc, "add", [1, 2])["result"] == 3
    assert call(ipsc, "add", {"a": 5, "b": 6})["result"] == 11
    assert call(ipsc, "plus", [1, 2, 3.5])["result"] == 6.5
    assert call(ipsc, "sys.ping", [])["result"] == "pong"


def test_class_based_namespaced_method_sees_caller(ipsc):
    reply = call(ipsc, "weather.sk", ["101010100"], 7)
    assert reply["id"] == 7
    assert reply["result"] == {"code": "101010100", "source": {"unit": 0, "client": 3, "type": 2}}


def test_seed_style_request_without_jsonrpc_member(ipsc):
    reply = ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, {"id": "s1", "method": "add", "params": [1, 2]})
    assert reply["result"] == 3


@pytest.mark.parametrize("method", ["nosuch", "foo.os.system", "weather._secret", "weather.nosuch",
                                    "__class__", "weather.target", "sys.__init__"])
def test_method_not_found(ipsc, method):
    reply = call(ipsc, method, [])
    assert reply["error"]["code"] == -32601, reply
    assert "result" not in reply


def test_full_name_in_method_not_found(ipsc):
    assert call(ipsc, "foo.os.system", ["ls"])["error"]["message"] == "Method not found: foo.os.system"


@pytest.mark.parametrize("method, params", [
    ("add", [1]), ("add", [1, 2, 3]), ("add", {"a": 1, "c": 2}), ("echo", {"text": "x"}),
    ("sleep", [-1]),
])
def test_invalid_params(ipsc, method, params):
    assert call(ipsc, method, params)["error"]["code"] == -32602


def test_parse_error_and_invalid_request(ipsc):
    drain(ipsc.notifies)
    ipsc.client.send_data(_server(), 1, 211, b'{"jsonrpc": "2.0", "id": ')
    notify = ipsc.notifies.get(timeout=10)
    assert notify.title == "null"
    assert json.loads(notify.param)["error"]["code"] == -32700
    assert call(ipsc, "echo", ["x"], jsonrpc="1.0")["error"]["code"] == -32600
    reply = ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, {"jsonrpc": "2.0", "id": "p", "method": "echo",
                                                       "params": "not-a-list"})
    assert reply["error"]["code"] == -32600


def test_method_exception_becomes_server_error_without_traceback(ipsc):
    reply = call(ipsc, "exception", ["boom", 1])
    assert reply["error"]["code"] == -32000
    assert reply["error"]["data"]["type"] == "builtins.Exception"
    assert "traceback" not in reply["error"]["data"]


def test_results_json_cannot_encode_are_converted(ipsc):
    result = call(ipsc, "mymodule.MyClass.awkward", [])["result"]
    assert result["when"].startswith("2026-11-21T08:30")
    assert result["raw"] == "bytes"
    assert sorted(result["tags"]) == ["a", "b"]
    assert float(result["price"]) == 1.5


def test_notification_runs_and_gets_no_reply(ipsc, tmp_path):
    marker = tmp_path / "notified.txt"
    drain(ipsc.notifies)
    assert ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, {"jsonrpc": "2.0", "method": "mymodule.MyClass.mymethod",
                                                      "params": [str(marker)]}) is None
    assert call(ipsc, "echo", ["after"], "after")["result"] == "after"
    # the notification's method runs in its own worker: its file may be created before it is written
    wait_for(lambda: marker.exists() and marker.read_text() == "ran\n", "the notified method to run")
    assert titles_until_marker(ipsc) == ["after"]  # and no reply to the notification


def test_batch_answered_element_by_element(ipsc):
    batch = [
        {"jsonrpc": "2.0", "id": "b1", "method": "add", "params": [1, 2]},
        {"jsonrpc": "2.0", "method": "echo", "params": ["notification"]},
        {"jsonrpc": "2.0", "id": "b2", "method": "nosuch"},
        {"jsonrpc": "2.0", "id": "b3", "method": "echo", "params": {"txt": "named"}},
        42,
    ]
    reply = ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, batch)
    by_id = {item["id"]: item for item in reply}
    assert len(reply) == 4
    assert by_id["b1"]["result"] == 3
    assert by_id["b2"]["error"]["code"] == -32601
    assert by_id["b3"]["result"] == "named"
    assert by_id[None]["error"]["code"] == -32600


def test_batch_of_notifications_gets_no_reply(ipsc, tmp_path):
    marker = tmp_path / "batch.txt"
    drain(ipsc.notifies)
    ipsc.client.send_data(_server(), 1, 211, json.dumps([
        {"jsonrpc": "2.0", "method": "mymodule.MyClass.mymethod", "params": [str(marker), "one"]},
        {"jsonrpc": "2.0", "method": "mymodule.MyClass.mymethod", "params": [str(marker), "two"]},
    ]).encode())
    assert call(ipsc, "echo", ["x"], "batch-after")["result"] == "x"
    wait_for(lambda: marker.exists() and len(marker.read_text().split()) == 2, "both notified calls to run")
    assert titles_until_marker(ipsc) == ["batch-after"]
    assert sorted(marker.read_text().split()) == ["one", "two"]


def test_empty_batch_is_invalid(ipsc):
    drain(ipsc.notifies)
    ipsc.client.send_data(_server(), 1, 211, b"[]")
    notify = ipsc.notifies.get(timeout=10)
    assert json.loads(notify.param)["error"]["code"] == -32600


def test_200_concurrent_calls_answered_exactly_once(ipsc):
    drain(ipsc.notifies)
    ids = [f"c{i}" for i in range(200)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        replies = list(pool.map(lambda rid: call(ipsc, "echo", [rid], rid), ids))
    assert [r["result"] for r in replies] == ids
    titles = titles_until_marker(ipsc)
    assert sorted(titles) == sorted(ids)


def test_second_caller_gets_its_own_replies(bus, ipsc):
    with FakeIpsc(bus.host, bus.port, unit=1, process=0) as other:
        drain(ipsc.notifies)
        assert call(other, "echo", ["other"], "o1")["result"] == "other"
        assert titles_until_marker(ipsc) == []


def test_graceful_stop_finishes_in_flight_call(bus, flavour, tmp_path):
    backend, mode = flavour
    folder = tmp_path / "ep"
    folder.mkdir()
    (folder / "mine.py").write_text(ENDPOINTS)
    conf = write_config(folder / "sbusr.conf", bus.port, {"endpoints": {"directories": [folder]},
                                                         "smartbus": {"backend": backend},
                                                         "execution": {"mode": mode, "workers": 2}},
                        unit=20, client=2)
    proc = ServerProcess(conf).start()
    started = tmp_path / "started"
    try:
        with FakeIpsc(bus.host, bus.port, unit=2, process=0) as fake:
            result: dict = {}
            caller = threading.Thread(target=lambda: result.update(
                fake.call_rpc(20, 2, {"jsonrpc": "2.0", "id": "slow", "method": "mymodule.MyClass.slow",
                                      "params": [1.5, str(started)]}, timeout=30)))
            caller.start()
            deadline = time.monotonic() + 30
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert started.exists()  # the call is running now
            proc.signal(signal.SIGTERM)
            caller.join(30)
            assert result.get("result") == 1.5
            assert proc.proc.wait(20) == 0
    finally:
        proc.stop()


def _server():
    from sbusr.smartbus.codec import Address

    return Address(SERVER_UNIT, SERVER_CLIENT, -1)


# ---------------------------------------------------------------------------- a vendor-library caller


@pytest.fixture(scope="module")
def vendor_caller(bus, server):
    """A libbusnetcli client (own process, net-client unit) calling sbusr like a flow does."""
    if vendor_unavailable():
        pytest.skip(vendor_unavailable())
    from tests.helpers.vendorproc import VendorAgent

    with VendorAgent(bus.port, unit=22, client=0, client_type=19) as agent:
        agent.wait_connected()
        yield agent


def vendor_call(agent, request: dict | list) -> dict | list:
    """Send as smartbusSendData(19, 1, -1, 1, 211, json); the NOTIFY reply arrives as data (cmd 15)."""
    from sbusr.smartbus import codec

    mark = agent.mark()
    result = agent.send("send_data", cmd=1, cmdtype=211, unit=SERVER_UNIT, client=SERVER_CLIENT, type=-1,
                        text=json.dumps(request))
    assert result.get("rc") == 0, result
    title = str(request["id"]) if isinstance(request, dict) else str(request[0]["id"])
    event = agent.wait_for(lambda e: e["event"] == "recvdata" and e["cmd"] == codec.CMD_NOTIFY
                           and codec.decode_notify(bytes.fromhex(e["data"])).title == title,
                           timeout=10, since=mark)
    assert (event["src_unit"], event["src_client"]) == (SERVER_UNIT, SERVER_CLIENT)
    return json.loads(codec.decode_notify(bytes.fromhex(event["data"])).param)


def test_vendor_library_client_calls_sbusr(vendor_caller):
    assert vendor_call(vendor_caller, {"jsonrpc": "2.0", "id": "v1", "method": "echo",
                                       "params": ["中文 hello"]})["result"] == "中文 hello"
    assert vendor_call(vendor_caller, {"jsonrpc": "2.0", "id": 2, "method": "add",
                                       "params": {"a": 2, "b": 3}})["result"] == 5
    reply = vendor_call(vendor_caller, {"jsonrpc": "2.0", "id": "v3", "method": "weather.sk",
                                        "params": ["x"]})
    assert reply["result"]["source"] == {"unit": 22, "client": 0, "type": 19}
    assert vendor_call(vendor_caller, {"jsonrpc": "2.0", "id": "v4", "method": "nosuch"})["error"]["code"] \
        == -32601
    assert vendor_call(vendor_caller, {"jsonrpc": "2.0", "id": "v5", "method": "add",
                                       "params": [1]})["error"]["code"] == -32602
    assert vendor_call(vendor_caller, {"jsonrpc": "2.0", "id": "v6", "method": "exception",
                                       "params": ["x"]})["error"]["code"] == -32000
    batch = vendor_call(vendor_caller, [{"jsonrpc": "2.0", "id": "b1", "method": "echo", "params": ["a"]},
                                        {"jsonrpc": "2.0", "id": "b2", "method": "add", "params": [1, 1]}])
    assert sorted((r["id"], r["result"]) for r in batch) == [("b1", "a"), ("b2", 2)]


def test_reply_too_large_for_a_notify_is_an_error_not_a_truncation(ipsc):
    reply = call(ipsc, "echo", ["x" * 20000], "big")
    assert reply["error"]["code"] == -32603
    assert "at most 15999" in reply["error"]["message"]
    assert call(ipsc, "echo", ["y" * 15000], "fits")["result"] == "y" * 15000


# ---------------------------------------------------------------------------- odd input: always a reply


def test_batch_reply_over_the_limit_gets_per_call_errors_while_they_fit(ipsc):
    batch = [{"jsonrpc": "2.0", "id": f"bf-{i}", "method": "echo", "params": ["x" * 300]} for i in range(60)]
    reply = ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, batch)
    assert sorted(r["id"] for r in reply) == sorted(f"bf-{i}" for i in range(60))
    assert {r["error"]["code"] for r in reply} == {-32603}
    assert "at most 15999" in reply[0]["error"]["message"]


@pytest.mark.parametrize("calls", [150, 3000])
def test_batch_reply_too_big_even_as_errors_gets_one_error_object(ipsc, calls):
    batch = [{"jsonrpc": "2.0", "id": f"bs-{i}", "method": "echo", "params": ["y" * 100]}
             for i in range(calls)]
    reply = ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, batch, timeout=60)
    assert isinstance(reply, dict), "one error object, not an array that cannot be sent either"
    assert reply["id"] == "bs-0" and reply["error"]["code"] == -32603
    assert f"{calls} calls" in reply["error"]["message"]
    assert call(ipsc, "echo", ["after"], "after-batch")["result"] == "after"  # still serving


@pytest.mark.parametrize("request_id, why", [
    ("i" * 102, "102 bytes"),
    ("中" * 51, "102 bytes"),   # 51 characters, 102 bytes in GBK
    ("a\u0000b", "NUL"),
    ("smile \U0001F600", "cannot be encoded as gbk"),
])
def test_id_that_cannot_be_a_notify_title_gets_invalid_request_under_null(ipsc, tmp_path, request_id, why):
    marker = tmp_path / "ran"
    request = {"jsonrpc": "2.0", "id": request_id, "method": "mymodule.MyClass.mymethod",
               "params": [str(marker)]}
    reply = ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, request, reply_title="null")
    assert reply["id"] is None
    assert reply["error"]["code"] == -32600
    assert "id cannot be a SmartBus notify title" in reply["error"]["message"]
    assert why in reply["error"]["message"] and "at most 101 bytes" in reply["error"]["message"]
    assert not marker.exists(), "a call whose reply cannot be sent is not run"


def test_longest_title_that_fits_is_answered_under_it(ipsc):
    assert call(ipsc, "echo", ["x"], "t" * 101)["result"] == "x"
    assert call(ipsc, "echo", ["x"], "中" * 50)["result"] == "x"  # 100 bytes in GBK


def test_batch_whose_first_id_cannot_be_a_title_is_answered_under_null(ipsc):
    batch = [{"jsonrpc": "2.0", "id": "z" * 300, "method": "echo", "params": ["a"]},
             {"jsonrpc": "2.0", "id": "bt-ok", "method": "echo", "params": ["b"]}]
    reply = ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, batch, reply_title="null")
    by_id = {r["id"]: r for r in reply}
    assert by_id[None]["error"]["code"] == -32600
    assert by_id["bt-ok"]["result"] == "b"


def test_huge_method_name_is_method_not_found_with_the_name_cut(ipsc):
    name = "m" * 100_000
    reply = call(ipsc, name, [], "huge-name")
    assert reply["error"]["code"] == -32601
    message = reply["error"]["message"]
    assert message.startswith("Method not found: mmm") and "(100000 characters)" in message
    assert len(message) < 300
    reply = call(ipsc, "weather." + name, [], "huge-name-ns")
    assert reply["error"]["code"] == -32601 and len(reply["error"]["message"]) < 300


def test_huge_exception_text_is_cut_not_turned_into_an_internal_error(ipsc):
    reply = call(ipsc, "exception", ["e" * 50_000], "huge-text")
    assert reply["error"]["code"] == -32000
    assert "(50000 characters)" in reply["error"]["message"]
    assert reply["error"]["data"]["type"] == "builtins.Exception"


# ---------------------------------------------------------------------------- logs an operator can read


def _log_after(server, offset: int, needle: str, timeout: float = 10.0) -> list[str]:
    """Lines written since ``offset`` once one contains ``needle`` (the log may trail the reply a little)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = server.output()[offset:].splitlines()
        if any(needle in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _lines_about(lines: list[str], needle: str) -> list[str]:
    return [line for line in lines if needle in line]


@pytest.mark.parametrize("method, params, code, level", [
    ("nosuch_logged", [], -32601, "INFO"),
    ("weather.nosuch_logged", [], -32601, "INFO"),
    ("add", {"a": 1, "b": 2, "nosuch_logged": 3}, -32602, "INFO"),
])
def test_expected_outcome_is_one_line_with_method_caller_and_code(server, ipsc, method, params, code, level):
    offset = len(server.output())
    assert call(ipsc, method, params, "log-1")["error"]["code"] == code
    lines = _log_after(server, offset, "nosuch_logged")
    about = _lines_about(lines, "nosuch_logged")
    assert len(about) == 1, lines
    assert f" {level} " in about[0] and method in about[0] and "0/3" in about[0] and str(code) in about[0]
    assert not [line for line in lines if "Traceback" in line or "UnsupportedVersion" in line
                or " ERROR " in line], lines


def test_unexpected_exception_is_one_error_with_its_traceback(server, ipsc):
    offset = len(server.output())
    assert call(ipsc, "exception", ["kaboom-logged"], "log-2")["error"]["code"] == -32000
    lines = _log_after(server, offset, "kaboom-logged")
    # oslo.log prefixes each traceback line with the record's "... ERROR <logger>"; records start with "[-]"
    records = [line for line in lines if " ERROR " in line and " [-] " in line]
    assert len(records) == 1 and "exception from 0/3" in records[0], lines
    assert len([line for line in lines if "Traceback (most recent call last)" in line]) == 1, lines
    assert not [line for line in lines if " ERROR " not in line and line.strip()], lines


def test_flood_of_malformed_notifies_is_one_warning_with_a_count(server, ipsc):
    offset = len(server.output())
    for _ in range(300):  # a NOTIFY too short to decode, as a hostile client would send it
        ipsc.client.send_data(_server(), codec.CMD_NOTIFY, codec.CMDTYPE_SYSTEM, b"\x0f" + b"\0" * 10)
    assert call(ipsc, "echo", ["after"], "after-flood")["result"] == "after"
    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline:  # the server handles the flood before the echo: lines are there
        lines = _lines_about(server.output()[offset:].splitlines(), "bad NOTIFY")
        if lines:
            break
        time.sleep(0.05)
    assert len(lines) == 1, lines
