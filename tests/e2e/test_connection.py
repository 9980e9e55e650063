"""BusConnection on its own, over a real development bus: starting flows on an IPSC stand-in, calling
another sbusr-server's connection, the peer table, status and sharing."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator

import pytest
from oslo_config import cfg

from sbusr import opts
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Packet
from sbusr.smartbus.interface import BusError, ClientConfig, FlowTimeout
from sbusr.testing.ipsc import FakeIpsc
from sbusr.testing.processes import BusProcess
from sbusr.transport.connection import BusConnection, ReplyTimeout
from sbusr.transport.flows import FlowRejected
from sbusr.transport.peers import IpscUnavailable

WAIT = 20.0
SHORT = 0.3  # a timeout that must expire: the stand-in IPSC stays silent on purpose
_client_ids = itertools.count(10)  # a fresh bus identity per connection: no waiting for the bus to forget one


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture(scope="module")
def bus() -> Iterator[BusProcess]:
    with BusProcess() as bus:
        yield bus


@pytest.fixture(scope="module")
def conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    return conf


@pytest.fixture
def connect(bus: BusProcess, conf: cfg.ConfigOpts) -> Iterator[Callable[..., BusConnection]]:
    acquired: list[BusConnection] = []

    def make(unit: int = 20, client: int | None = None) -> BusConnection:
        config = ClientConfig(host=bus.host, port=bus.port, unit_id=unit,
                              client_id=next(_client_ids) if client is None else client)
        conn = BusConnection.acquire(conf, config)
        acquired.append(conn)
        assert conn.client.wait_connected(WAIT)
        return conn

    yield make
    for conn in acquired:
        conn.release()


@pytest.fixture(scope="module")
def ipsc(bus: BusProcess) -> Iterator[FakeIpsc]:
    with FakeIpsc(bus.host, bus.port, unit=3, process=next(_client_ids)) as fake:
        fake.on_flow("sum", result=[3])
        fake.on_flow("bad", ack=-3, message="no such flow")
        fake.on_flow("silent", silent=True)
        fake.on_flow("noresult", result=None)
        yield fake


def sees_ipsc(conn: BusConnection, ipsc: FakeIpsc) -> bool:
    return any(p.is_ipsc and (p.unit, p.client) == (ipsc.unit, ipsc.process) for p in conn.peers())


def pending_flows(conn: BusConnection) -> int:
    return conn.client.client.pending_flows  # type: ignore[attr-defined]  # the native backend's count


# ---------------------------------------------------------------------------- starting flows


def test_start_flow_returns_the_ack_and_with_wait_the_result(connect, ipsc):
    conn = connect()
    assert eventually(lambda: sees_ipsc(conn, ipsc))
    started = conn.start_flow("P", "sum", [1, "二"], wait=True, ack_timeout=WAIT, result_timeout=WAIT)
    assert (started.unit, started.client, started.ack, started.result) == (ipsc.unit, ipsc.process, 1, [3])
    call = ipsc.calls[-1]
    assert (call.project, call.flow, call.invoke_id, call.mode) == ("P", "sum", started.invoke_id, 0)
    assert json.loads(call.params) == [1, "二"]

    started = conn.start_flow("P", "sum", [], unit=ipsc.unit, client=ipsc.process, ack_timeout=WAIT,
                              result_timeout=WAIT)
    assert started.ack == 1 and started.result is None and ipsc.calls[-1].mode == 1  # no result asked for
    assert pending_flows(conn) == 0


def test_an_error_ack_is_flow_rejected(connect, ipsc):
    conn = connect()
    assert eventually(lambda: sees_ipsc(conn, ipsc))
    with pytest.raises(FlowRejected) as err:
        conn.start_flow("P", "bad", [], wait=True, ack_timeout=WAIT, result_timeout=WAIT)
    assert (err.value.ack, err.value.ack_message, err.value.source) == (-3, "no such flow", ipsc.address)
    assert eventually(lambda: pending_flows(conn) == 0)  # the result failed with the ack, not later


def test_no_ack_or_no_result_in_time_is_a_flow_timeout(connect, ipsc):
    conn = connect()
    assert eventually(lambda: sees_ipsc(conn, ipsc))
    with pytest.raises(FlowTimeout) as err:
        conn.start_flow("P", "silent", [], wait=True, ack_timeout=SHORT, result_timeout=SHORT)
    assert err.value.code == codec.ERR_TIMEOUT and "did not acknowledge" in str(err.value)
    with pytest.raises(FlowTimeout) as err:
        conn.start_flow("P", "noresult", [], wait=True, ack_timeout=WAIT, result_timeout=SHORT)
    assert "P/noresult returned no result" in str(err.value)
    assert eventually(lambda: pending_flows(conn) == 0)  # nothing stays behind once the timers fired


def test_no_matching_ipsc_says_whether_one_was_there(bus, connect):
    conn = connect()
    with pytest.raises(IpscUnavailable) as err:
        conn.start_flow("P", "F", [], unit=15, ack_timeout=WAIT, result_timeout=WAIT)
    assert not err.value.known
    with FakeIpsc(bus.host, bus.port, unit=15, process=next(_client_ids)) as gone:
        assert eventually(lambda: sees_ipsc(conn, gone))
    assert eventually(lambda: not sees_ipsc(conn, gone))
    with pytest.raises(IpscUnavailable) as err:
        conn.start_flow("P", "F", [], unit=15, ack_timeout=WAIT, result_timeout=WAIT)
    assert err.value.known and "unit 15" in str(err.value)


# ---------------------------------------------------------------------------- calling another server


def answering(conn: BusConnection, answer: Callable[[dict], bytes | None]) -> list[Packet]:
    """Make ``conn`` serve requests: each answered with ``answer(request)`` under the request's id."""
    seen: list[Packet] = []

    def sink(packet: Packet) -> None:
        seen.append(packet)
        request = json.loads(packet.body)
        body = answer(request)
        if body is not None and "id" in request:
            conn.send_reply(packet.src, request["id"], body)

    conn.set_request_sink(sink)
    return seen


def test_call_returns_the_reply_titled_with_the_request_id(connect):
    caller, server = connect(), connect(unit=21)
    seen = answering(server, lambda r: json.dumps({"id": r["id"], "result": r["params"]}).encode())
    request = b'{"id": "id-1", "method": "m", "params": [7]}'
    for _ in range(2):  # the same id again: the first call's waiter is gone
        raw = caller.call(21, server.config.client_id, "id-1", request, WAIT)
        assert json.loads(raw)["result"] == [7]
    caller.send_request(21, server.config.client_id, b'{"method": "m", "params": []}')  # a notification
    assert eventually(lambda: len(seen) == 3)
    assert seen[0].src == caller.config.address and seen[0].cmdtype == codec.CMDTYPE_RPC


def test_call_without_a_reply_times_out_and_forgets_the_waiter(connect):
    caller, server = connect(), connect(unit=21)
    answering(server, lambda r: None)
    for _ in range(2):
        with pytest.raises(ReplyTimeout):
            caller.call(21, server.config.client_id, "lost", b'{"id": "lost", "method": "m"}', SHORT)


def test_one_request_sink_per_connection(connect):
    conn = connect()
    conn.set_request_sink(lambda packet: None)
    with pytest.raises(BusError):
        conn.set_request_sink(lambda packet: None)
    conn.set_request_sink(None)


# ---------------------------------------------------------------------------- identity and sharing


def test_status_and_peers(connect, ipsc):
    conn = connect()
    assert eventually(lambda: sees_ipsc(conn, ipsc))
    status = conn.status()
    assert status["connected"] is True and status["ipsc"] >= 1
    assert status["address"] == {"unit": 20, "client": conn.config.client_id, "type": conn.config.client_type}
    peer = next(p for p in conn.peers() if (p.unit, p.client) == (ipsc.unit, ipsc.process))
    assert peer.as_dict()["type"] == codec.CLIENT_TYPE_IPSC


def test_one_connection_per_identity_until_the_last_release(bus, conf):
    config = ClientConfig(host=bus.host, port=bus.port, unit_id=20, client_id=next(_client_ids))
    first = BusConnection.acquire(conf, config)
    second = BusConnection.acquire(conf, config)
    try:
        assert first is second and first.client.wait_connected(WAIT)
        second.release()
        assert first.connected
    finally:
        first.release()
    assert not first.connected
    fresh = BusConnection.acquire(conf, config)  # a new connection once the old one is gone
    try:
        assert fresh is not first and fresh.client.wait_connected(WAIT)
    finally:
        fresh.release()
