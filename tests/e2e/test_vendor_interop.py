"""Interop proof against the real vendor libbusnetcli.so and our dev bus.

Every vendor client runs in its own process (tests/vendor_agent.py: the library
allows one unit id per process); native clients are ThreadedClient instances in
this process; the bus is ``sbusr-bus`` in a subprocess (BusProcess).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sbusr.smartbus import codec, flow_messages
from sbusr.smartbus.codec import Address, GlobalConnect, Packet
from sbusr.smartbus.interface import ClientConfig, ClientHandlers
from sbusr.testing.processes import BusProcess, free_port
from tests.helpers.vendorproc import VendorAgent, vendor_unavailable

_PROBLEM = vendor_unavailable()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=f"vendor library unavailable: {_PROBLEM}")

BUS_UNIT = 3
GBK = "gbk"
WAIT = 10.0


# --------------------------------------------------------------------------- native side


class Recorder:
    """ClientHandlers that keep every event, with a bounded wait."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._cond = threading.Condition()
        self.handlers = ClientHandlers(
            on_connect=lambda ap: self._add("connect", ap),
            on_connect_failed=lambda code: self._add("connect_failed", code),
            on_disconnect=lambda: self._add("disconnect", None),
            on_packet=lambda pkt: self._add("packet", pkt),
            on_global_connect=lambda gc: self._add("global_connect", gc),
        )

    def _add(self, kind: str, value: Any) -> None:
        with self._cond:
            self.events.append((kind, value))
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait_for(self, kind: str, predicate: Callable[[Any], bool] = lambda _v: True,
                 timeout: float = WAIT, since: int = 0) -> Any:
        return self.wait_pos(kind, predicate, timeout, since)[0]

    def wait_pos(self, kind: str, predicate: Callable[[Any], bool] = lambda _v: True,
                 timeout: float = WAIT, since: int = 0) -> tuple[Any, int]:
        """The first matching event at or after ``since`` and the position after it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            pos = since
            while True:
                while pos < len(self.events):
                    k, v = self.events[pos]
                    pos += 1
                    if k == kind and predicate(v):
                        return v, pos
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind} event within {timeout} s; "
                                         f"got {self.events[since:][-20:]}")
                self._cond.wait(left)


@pytest.fixture
def bus() -> Iterator[BusProcess]:
    proc = BusProcess(unit_id=BUS_UNIT).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def native(bus: BusProcess) -> Iterator[Callable[..., tuple[Any, Recorder]]]:
    """Factory: a started ThreadedClient on ``bus`` plus its Recorder."""
    from sbusr.smartbus.native.threaded import ThreadedClient

    clients: list[Any] = []

    def make(unit: int, client: int, client_type: int, add_info: str = "native", *,
             port: int | None = None, **tunables: Any) -> tuple[Any, Recorder]:
        rec = Recorder()
        cfg = ClientConfig(host="127.0.0.1", port=port or bus.port, unit_id=unit, client_id=client,
                           client_type=client_type, add_info=add_info)
        cl = ThreadedClient(cfg, rec.handlers, **tunables)
        clients.append(cl)
        cl.start()
        assert cl.wait_connected(WAIT), f"native client {cfg.address} did not register"
        return cl, rec

    yield make
    for cl in clients:
        cl.stop()


@pytest.fixture
def agents(bus: BusProcess) -> Iterator[Callable[..., VendorAgent]]:
    """Factory: a started vendor agent on ``bus`` (waits for its registration)."""
    started: list[VendorAgent] = []

    def make(unit: int, client: int = 0, client_type: int = 19, add_info: str = "", *,
             backend: bool = False, wait: bool = True) -> VendorAgent:
        agent = VendorAgent(bus.port, unit, client, client_type, add_info=add_info, backend=backend)
        started.append(agent)
        agent.start()
        if wait:
            agent.wait_connected()
        return agent

    yield make
    for agent in started:
        agent.stop()


def _is(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == kind and all(e.get(k) == v for k, v in fields.items())


def _src(e: dict[str, Any]) -> tuple[int, int, int]:
    return e["src_unit"], e["src_client"], e["src_type"]


def _dst(e: dict[str, Any]) -> tuple[int, int, int]:
    return e["dst_unit"], e["dst_client"], e["dst_type"]


# --------------------------------------------------------------------------- 1. registration


def test_vendor_registers_and_gets_bus_unit_as_access_point(agents: Callable[..., VendorAgent]) -> None:
    agent = agents(20, 0, 19, wait=False)
    event = agent.wait_connected(timeout=WAIT)
    assert event == {"event": "connection", "client": 0, "ap": BUS_UNIT, "ack": 0}
    assert not agent.find(_is("connection"))[1:], "exactly one connection callback expected"


def test_one_unit_id_per_process() -> None:
    code = ("from sbusr.smartbus.vendor import binding\n"
            "lib = binding.VendorLibrary.load(); lib.init(20); lib.init(20)\n"
            "try:\n    lib.init(21)\nexcept binding.BusError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert "ERR libbusnetcli can be initialised once per process with one unit id" in out


# --------------------------------------------------------------------------- 2. global connect


def test_global_connect_join_existing_and_leave(agents: Callable[..., VendorAgent]) -> None:
    a = agents(20, 0, 19, add_info="A-信息")
    b = agents(21, 1, 5, add_info="B-info")
    # A hears about the newcomer from the bus (status 1) ...
    assert a.wait_for(_is("global_connect", unit=21)) == {
        "event": "global_connect", "unit": 21, "client": 1, "type": 5, "ap": BUS_UNIT, "status": 1,
        "add_info": "B-info"}
    # ... and B about the existing A from A's library reply (status 2), GBK text intact.
    assert b.wait_for(_is("global_connect", unit=20)) == {
        "event": "global_connect", "unit": 20, "client": 0, "type": 19, "ap": BUS_UNIT, "status": 2,
        "add_info": "A-信息"}
    mark = a.mark()
    b.kill()
    assert a.wait_for(_is("global_connect", unit=21), since=mark) == {
        "event": "global_connect", "unit": 21, "client": 1, "type": 5, "ap": BUS_UNIT, "status": 0,
        "add_info": "B-info"}


# --------------------------------------------------------------------------- 3. data


def test_data_between_vendor_and_native_clients(agents: Callable[..., VendorAgent],
                                                native: Callable[..., tuple[Any, Recorder]]) -> None:
    a = agents(20, 0, 19)
    b = agents(21, 1, 19)
    n, rec = native(22, 2, 7)
    payload = bytes(range(256)) + "中文".encode(GBK)  # odd length: the vendor pads the packet

    # vendor -> vendor
    assert a.send("send_data", cmd=200, cmdtype=3, unit=21, client=1, type=19, hex=payload.hex())["rc"] == 0
    got = b.wait_for(_is("recvdata", cmd=200))
    assert (got["cmdtype"], _src(got), _dst(got)) == (3, (20, 0, 19), (21, 1, 19))
    assert bytes.fromhex(got["data"]) == payload
    assert (got["datalen"], got["size"]) == (len(payload), len(payload))
    assert got["packet_size"] == 20 + len(payload) + (len(payload) & 3)

    # vendor -> native (dst type -1 with a client id: not checked)
    assert a.send("send_data", cmd=1, cmdtype=codec.CMDTYPE_RPC, unit=22, client=2, type=-1,
                  hex=payload.hex())["rc"] == 0
    pkt: Packet = rec.wait_for("packet", lambda p: p.cmd == 1)
    assert (pkt.cmdtype, pkt.src, pkt.dst) == (codec.CMDTYPE_RPC, Address(20, 0, 19), Address(22, 2, -1))
    assert pkt.body == payload

    # native -> vendor, including an empty packet
    n.send_data(Address(20, 0, 19), 77, 5, b"\x00native\xff")
    n.send_data(Address(20, 0, 19), 78, 3, b"")
    got = a.wait_for(_is("recvdata", cmd=77))
    assert (got["cmdtype"], _src(got), _dst(got)) == (5, (22, 2, 7), (20, 0, 19))
    assert bytes.fromhex(got["data"]) == b"\x00native\xff"
    assert (got["packet_size"], got["datalen"]) == (28, 8)
    empty = a.wait_for(_is("recvdata", cmd=78))
    assert (empty["size"], empty["data"], empty["packet_size"]) == (0, "", 20)

    # vendor ping to native: the native client acks like the library does; both ends see it
    assert a.send("ping", unit=22, client=2, type=7, text="PING中")["rc"] == 0
    ack = a.wait_for(_is("recvdata", cmd=codec.CMD_PING_ACK))
    assert (ack["cmdtype"], _src(ack), bytes.fromhex(ack["data"])) == (1, (22, 2, 7), "PING中".encode(GBK))
    # native ping to vendor: the vendor library answers by itself
    mark = rec.mark()
    n.ping(Address(20, 0, 19), b"np")
    back: Packet = rec.wait_for("packet", lambda p: p.cmd == codec.CMD_PING_ACK, since=mark)
    assert (back.src, back.body) == (Address(20, 0, 19), b"np")


# --------------------------------------------------------------------------- 4. notify


def test_notify_vendor_to_native_ipsc_and_back(agents: Callable[..., VendorAgent],
                                               native: Callable[..., tuple[Any, Recorder]]) -> None:
    ipsc, rec = native(0, 0, codec.CLIENT_TYPE_IPSC)
    a = agents(20, 0, 19)
    res = a.send("send_notify", unit=0, client=0, project="Proj项目", title="标题-1", mode=0, expires=5000,
                 param="notify-param 中文")
    assert res["rc"] >= 1
    pkt: Packet = rec.wait_for("packet", lambda p: p.cmd == codec.CMD_NOTIFY)
    assert (pkt.cmdtype, pkt.src, pkt.dst) == (1, Address(20, 0, 19), Address(0, 0, 2))
    assert pkt.header.datalen == 148 + len("notify-param 中文".encode(GBK)) + 2
    note = codec.decode_notify(pkt.body)
    assert note == codec.Notify("Proj项目", "标题-1", "notify-param 中文".encode(GBK), res["rc"], 0, 5000)

    # native notify to the vendor client: the library hands it to recvdata (cmd 15)
    invoke_id = ipsc.send_notify(20, 0, "P2", "回复", "答复 param".encode(GBK), expires_ms=1234,
                                 client_type=19)
    got = a.wait_for(_is("recvdata", cmd=codec.CMD_NOTIFY))
    assert (got["cmdtype"], _src(got), _dst(got)) == (1, (0, 0, 2), (20, 0, 19))
    assert codec.decode_notify(bytes.fromhex(got["data"])) == codec.Notify(
        "P2", "回复", "答复 param".encode(GBK), invoke_id, 0, 1234)


# --------------------------------------------------------------------------- 5. flow


def _answer_flows(ipsc: Any, rec: Recorder, count: int) -> list[flow_messages.CallFlow]:
    """IPSC role for ``count`` CALL_FLOWs: flow "ok" starts and returns, "err" fails, others stay silent."""
    calls = []
    pos = 0
    for _ in range(count):
        pkt, pos = rec.wait_pos("packet", lambda p: p.cmd == codec.CMD_CALL_FLOW, since=pos)
        call = flow_messages.decode_call_flow(pkt.body)
        calls.append(call)
        if call.flow == "ok":
            ipsc.send_flow_ack(pkt.src, call.project, call.invoke_id, codec.FLOW_ACK_OK)
            ipsc.send_flow_result(pkt.src, call.project, call.invoke_id, '["ok",1,"中文"]'.encode(GBK))
        elif call.flow == "err":
            ipsc.send_flow_ack(pkt.src, call.project, call.invoke_id, -3, "flow not found 中文".encode(GBK))
    return calls


def test_flow_invocation_ack_result_error_and_timeout(agents: Callable[..., VendorAgent],
                                                      native: Callable[..., tuple[Any, Recorder]]) -> None:
    ipsc, rec = native(0, 0, codec.CLIENT_TYPE_IPSC)
    a = agents(20, 0, 19)
    ok = a.send("invoke_flow", unit=0, client=0, project="Proj", flow="ok", mode=0, timeout_ms=10000,
                params='[1,"abc","中文"]')["rc"]
    err = a.send("invoke_flow", unit=0, client=0, project="Proj", flow="err", mode=0, timeout_ms=1500)["rc"]
    silent = a.send("invoke_flow", unit=0, client=0, project="Proj", flow="silent", mode=0,
                    timeout_ms=1000)["rc"]
    assert ok >= 1 and err == ok + 1 and silent == ok + 2
    calls = _answer_flows(ipsc, rec, 3)
    assert calls[0] == flow_messages.CallFlow("Proj", "ok", '[1,"abc","中文"]'.encode(GBK), ok, 0, -1)

    ack = a.wait_for(_is("flow_ack", invoke_id=ok))
    assert (ack["ack"], ack["msg"], ack["project"], _src(ack)) == (1, "", "Proj", (0, 0, 2))
    ret = a.wait_for(_is("flow_ret", invoke_id=ok))
    assert (ret["ret"], ret["param"], _src(ret)) == (1, '["ok",1,"中文"]', (0, 0, 2))

    ack = a.wait_for(_is("flow_ack", invoke_id=err))
    assert (ack["ack"], ack["msg"]) == (-3, "flow not found 中文")
    # a failed start does not end the library's result wait: it times out
    ret = a.wait_for(_is("flow_ret", invoke_id=err))
    assert (ret["ret"], ret["head"]) == (codec.ERR_TIMEOUT, None)

    ack = a.wait_for(_is("flow_ack", invoke_id=silent))
    assert (ack["ack"], ack["msg"], ack["head"]) == (codec.ERR_TIMEOUT, "", None)
    ret = a.wait_for(_is("flow_ret", invoke_id=silent))
    assert (ret["ret"], ret["param"]) == (codec.ERR_TIMEOUT, "")


# --------------------------------------------------------------------------- 6. bus restart


def test_clients_reconnect_after_bus_restart(bus: BusProcess, agents: Callable[..., VendorAgent],
                                             native: Callable[..., tuple[Any, Recorder]]) -> None:
    a = agents(20, 0, 19)
    n, rec = native(22, 2, 19)
    a_mark, n_mark = a.mark(), rec.mark()
    bus.restart()
    a.wait_for(_is("disconnect"), since=a_mark)
    rec.wait_for("disconnect", since=n_mark)
    # the vendor retries the TCP connect every 2 s: allow a few rounds
    assert a.wait_for(_is("connection", ack=0), timeout=20, since=a_mark)["ap"] == BUS_UNIT
    assert rec.wait_for("connect", timeout=20, since=n_mark) == BUS_UNIT
    assert n.wait_connected(WAIT)
    # a refused reconnect is reported once with -20 (if the library saw the bus down at all)
    assert {e["ack"] for e in a.find(_is("connection"), since=a_mark)} <= {0, codec.ERR_ESTABLISH_CONNECT}

    assert a.send("send_data", cmd=9, cmdtype=3, unit=22, client=2, type=19, text="after")["rc"] == 0
    pkt: Packet = rec.wait_for("packet", lambda p: p.cmd == 9, since=n_mark)
    assert pkt.body == b"after" and pkt.src == Address(20, 0, 19)
    n.send_data(Address(20, 0, 19), 10, 3, b"back")
    got = a.wait_for(_is("recvdata", cmd=10), since=a_mark)
    assert bytes.fromhex(got["data"]) == b"back"


# --------------------------------------------------------------------------- VendorClient backend


def test_vendor_client_backend(agents: Callable[..., VendorAgent],
                               native: Callable[..., tuple[Any, Recorder]]) -> None:
    ipsc, rec = native(0, 0, codec.CLIENT_TYPE_IPSC, "ipsc")
    peer, peer_rec = native(22, 2, 19, "peer")
    v = agents(20, 1, 19, add_info="后端", backend=True)
    assert v.wait_connected()["ap"] == BUS_UNIT
    state = v.send("state")
    assert (state["connected"], state["ap"]) == (True, BUS_UNIT)
    # global connect through the backend: the natives answer the join with status 2
    gc = v.wait_for(_is("global_connect", unit=22))
    assert (gc["client"], gc["type"], gc["status"], gc["add_info"]) == (2, 19, 2, "peer")
    joined: GlobalConnect = peer_rec.wait_for("global_connect", lambda g: g.unit == 20)
    assert (joined.client, joined.status, joined.add_info) == (1, 1, "后端")

    # data both ways
    assert v.send("send_data", cmd=3, cmdtype=211, unit=22, client=2, type=19, hex="00ff10")["rc"] == 0
    pkt: Packet = peer_rec.wait_for("packet", lambda p: p.cmd == 3)
    assert (pkt.body, pkt.src, pkt.cmdtype) == (b"\x00\xff\x10", Address(20, 1, 19), 211)
    peer.send_data(Address(20, 1, 19), 4, 3, b"to-backend")
    got = v.wait_for(_is("recvdata", cmd=4))
    assert (bytes.fromhex(got["data"]), _src(got)) == (b"to-backend", (22, 2, 19))

    # flows: result, failed start (result fails at once), silent IPSC (FlowTimeout)
    ok = v.send("invoke_flow", unit=0, client=0, project="Proj", flow="ok", params="[2]",
                want_result=True, ack_timeout=5, result_timeout=10)["rc"]
    err = v.send("invoke_flow", unit=0, client=0, project="Proj", flow="err", want_result=True,
                 ack_timeout=5, result_timeout=10)["rc"]
    silent = v.send("invoke_flow", unit=0, client=0, project="Proj", flow="silent", want_result=False,
                    ack_timeout=1)["rc"]
    calls = _answer_flows(ipsc, rec, 3)
    # the backend always calls with mode 0: after a mode-1 call the library refuses the next mode-0
    # call with -7 although it sends it (see docs/smartbus-protocol-notes.md)
    assert [(c.flow, c.mode, c.invoke_id) for c in calls] == [("ok", 0, ok), ("err", 0, err),
                                                                 ("silent", 0, silent)]
    ack = v.wait_for(_is("flow_ack", invoke_id=ok))
    assert (ack["ack"], ack["src"]) == (1, [0, 0, 2])
    assert v.wait_for(_is("flow_ret", invoke_id=ok))["param"] == '["ok",1,"中文"]'
    assert v.wait_for(_is("flow_ack", invoke_id=err))["msg"] == "flow not found 中文"
    ret = v.wait_for(_is("flow_ret", invoke_id=err))
    assert (ret["error"], ret["ret"]) == ("BusError", -3)
    ack = v.wait_for(_is("flow_ack", invoke_id=silent))
    assert (ack["error"], ack["ack"]) == ("FlowTimeout", codec.ERR_TIMEOUT)
    assert not v.find(_is("flow_ret", invoke_id=silent))

    # notify: the library's SendNotify reaches IPSCs; other targets get the same bytes via SendData
    rc = v.send("send_notify", unit=0, client=0, project="P", title="T", param="p", expires=10)["rc"]
    note = codec.decode_notify(rec.wait_for("packet", lambda p: p.cmd == codec.CMD_NOTIFY).body)
    assert (note.invoke_id, note.title, note.param) == (rc, "T", b"p")
    rc = v.send("send_notify", unit=0, client=0, project="P", title="T2", param="q", expires=10,
                client_type=19)["rc"]
    packet = rec.wait_for("packet", lambda p: p.cmd == codec.CMD_NOTIFY
                          and codec.decode_notify(p.body).title == "T2")
    note = codec.decode_notify(packet.body)
    assert (packet.cmdtype, packet.dst.type) == (codec.CMDTYPE_SYSTEM, 19)
    assert (note.invoke_id, note.param, note.expires) == (rc, b"q", 10)


def test_vendor_client_reports_refused_connect_then_connects_when_bus_appears() -> None:
    port = free_port()
    late_bus = BusProcess(port=port, unit_id=BUS_UNIT)
    agent = VendorAgent(port, 20, 0, 19, backend=True)
    try:
        agent.start()
        # on_connect_failed(-20) once; the library keeps retrying every 2 s by itself
        assert agent.wait_for(_is("connection"))["ack"] == codec.ERR_ESTABLISH_CONNECT
        assert agent.send("state")["connected"] is False
        late_bus.start()
        assert agent.wait_for(_is("connection", ack=0), timeout=20)["ap"] == BUS_UNIT
        assert agent.send("state")["connected"] is True
    finally:
        agent.stop()
        late_bus.stop()


class _HostileBus:
    """A scripted bus: acks one registration, then sends impossible GLOBAL_CONNECT notices and a real one."""

    def __init__(self, notices: list[GlobalConnect]) -> None:
        import socket
        self.notices = notices
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(WAIT)
        conn, _ = self.sock.accept()
        decoder = codec.FrameDecoder()
        conn.settimeout(0.2)
        registered = False
        while not self.stop.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            for pkt, _raw in decoder.feed(chunk):
                if pkt.cmd == codec.CMD_REGISTER and pkt.cmdtype == 0 and not registered:
                    registered = True
                    conn.sendall(codec.encode_register_ack(Address(BUS_UNIT, 0, 1), pkt.src, 0))
                    for event in self.notices:
                        conn.sendall(codec.encode_global_connect(event.address, pkt.src, event))
                elif pkt.cmd == codec.CMD_HEARTBEAT and pkt.cmdtype == 0:
                    conn.sendall(codec.encode_heartbeat(Address(BUS_UNIT, 0, 1), pkt.src,
                                                        codec.decode_heartbeat(pkt.body), ack=True))
        conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)
        self.sock.close()


def test_vendor_client_backend_ignores_impossible_notices() -> None:
    bad = [GlobalConnect(60, 1, 2, BUS_UNIT, codec.GC_CONNECTED, "unit 60"),
           GlobalConnect(5, -127, 22, BUS_UNIT, codec.GC_CONNECTED, "client -127"),
           GlobalConnect(5, 9, 2, BUS_UNIT, 7, "status 7")]
    good = GlobalConnect(5, 9, 2, BUS_UNIT, codec.GC_CONNECTED, "real")
    hostile = _HostileBus(bad * 10 + [good])
    agent = VendorAgent(hostile.port, 20, 0, 19, backend=True)
    try:
        agent.start()
        agent.wait_connected()
        real = agent.wait_for(_is("global_connect", add_info="real"))
        assert (real["unit"], real["client"], real["status"]) == (5, 9, codec.GC_CONNECTED)
        seen = [e for e in agent.events if e["event"] == "global_connect"]
        assert [e["add_info"] for e in seen] == ["real"], seen  # the library passed all 31 on; we drop 30
        assert agent.stderr_tail(200).count("ignored a global-connect notice") <= 1
    finally:
        agent.stop()
        hostile.close()
