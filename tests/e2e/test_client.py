"""Native SmartBus client (asyncio core + thread facade) against the development bus and raw servers."""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sbusr.smartbus import codec, flow_messages
from sbusr.smartbus.bus import BusThread
from sbusr.smartbus.codec import Address, GlobalConnect, Packet
from sbusr.smartbus.interface import BusError, ClientConfig, ClientHandlers, FlowTimeout, NotConnected
from sbusr.smartbus.native.client import SmartBusClient
from sbusr.smartbus.native.threaded import ThreadedClient
from sbusr.testing.processes import BusProcess, free_port

WAIT = 10.0
BUS_UNIT = 3
IPSC_UNIT = 1
FAST = {"backoff_initial": 0.05, "backoff_max": 0.2, "heartbeat_interval": 0.2}


class Recorder:
    """Collects every handler call; tests wait for the events they expect."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.cond = threading.Condition()
        self.on_packet_hook: Callable[[Packet], None] | None = None

    def handlers(self) -> ClientHandlers:
        return ClientHandlers(
            on_connect=lambda ap: self._add("connect", ap),
            on_connect_failed=lambda code: self._add("failed", code),
            on_disconnect=lambda: self._add("disconnect", None),
            on_packet=self._packet,
            on_global_connect=lambda ev: self._add("global", ev),
        )

    def _packet(self, pkt: Packet) -> None:
        self._add("packet", pkt)
        if self.on_packet_hook is not None:
            self.on_packet_hook(pkt)

    def _add(self, kind: str, value: Any) -> None:
        with self.cond:
            self.events.append((kind, value))
            self.cond.notify_all()

    def of(self, kind: str) -> list[Any]:
        with self.cond:
            return [v for k, v in self.events if k == kind]

    def wait(self, kind: str, pred: Callable[[Any], bool] = lambda v: True, count: int = 1) -> list[Any]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len([v for v in self.of(kind) if pred(v)]) >= count, WAIT)
        found = [v for v in self.of(kind) if pred(v)]
        assert ok, f"expected {count} {kind!r} event(s), got {found}; all events: {self.events}"
        return found


def is_cmd(cmd: int, cmdtype: int) -> Callable[[Packet], bool]:
    return lambda p: p.cmd == cmd and p.cmdtype == cmdtype


def eventually(pred: Callable[[], bool]) -> bool:
    stop = threading.Event()
    for _ in range(int(WAIT / 0.02)):
        if pred():
            return True
        stop.wait(0.02)
    return pred()


@pytest.fixture
def bus() -> Iterator[BusThread]:
    with BusThread(host="127.0.0.1", port=0, unit_id=BUS_UNIT) as b:
        yield b


@pytest.fixture
def make_client() -> Iterator[Callable[..., tuple[ThreadedClient, Recorder]]]:
    started: list[ThreadedClient] = []

    def make(port: int, unit: int, client: int = 0, ctype: int = 19, start: bool = True,
             **kw: Any) -> tuple[ThreadedClient, Recorder]:
        tunables = {k: kw.pop(k) for k in list(kw) if hasattr(SmartBusClient, k)}
        cfg = ClientConfig(host="127.0.0.1", port=port, unit_id=unit, client_id=client, client_type=ctype,
                           add_info=kw.pop("add_info", f"u{unit}c{client}"), **kw)
        rec = Recorder()
        tc = ThreadedClient(cfg, rec.handlers(), **{**FAST, **tunables})
        started.append(tc)
        if start:
            tc.start()
        return tc, rec

    yield make
    for tc in started:
        tc.stop()


def connected(make_client: Callable[..., tuple[ThreadedClient, Recorder]], port: int, unit: int,
              client: int = 0, ctype: int = 19, **kw: Any) -> tuple[ThreadedClient, Recorder]:
    tc, rec = make_client(port, unit, client, ctype, **kw)
    assert tc.wait_connected(WAIT), rec.events
    rec.wait("connect")  # on_connect runs on the loop thread just after the connected flag is raised
    return tc, rec


# ------------------------------------------------------------------ connection


def test_connect_reports_bus_unit_as_access_point(bus, make_client):
    tc, rec = connected(make_client, bus.port, 20, 4, ctype=19)
    assert rec.wait("connect") == [BUS_UNIT]
    assert tc.connected and tc.access_point == BUS_UNIT
    (info,) = bus.clients()
    assert (info.unit, info.client, info.type, info.add_info, info.connect_index) == (20, 4, 19, "u20c4", 0)
    tc.stop()
    assert not tc.connected
    assert not [t for t in threading.enumerate() if t.name == "smartbus-20-4"]
    with pytest.raises(NotConnected):
        tc.send_data(Address(21, 0, 19), 1, 3, b"x")
    tc.start()  # a stopped client can start again
    assert tc.wait_connected(WAIT)
    # on_connect runs on the loop thread just after the connected flag is raised
    assert eventually(lambda: rec.of("connect") == [BUS_UNIT, BUS_UNIT])
    assert rec.of("disconnect") == []  # a deliberate stop is not a link loss


def test_stop_from_a_handler_and_pending_flows_fail_on_stop(bus, make_client):
    a, ra = connected(make_client, bus.port, 20, 0)
    b, rb = connected(make_client, bus.port, 21, 0)
    inv = a.invoke_flow(IPSC_UNIT, 0, "P", "F", b"[]", want_result=True, ack_timeout=60, result_timeout=60)
    rb.on_packet_hook = lambda pkt: b.stop()
    a.send_data(b.config.address, 1, 3, b"stop now")
    rb.wait("packet")
    assert eventually(lambda: not [t for t in threading.enumerate() if t.name == "smartbus-21-0"])
    ra.wait("global", lambda e: e.unit == 21 and e.status == codec.GC_DISCONNECTED)
    a.stop()
    for fut in (inv.ack, inv.result):
        assert fut is not None
        with pytest.raises(BusError):
            fut.result(WAIT)


def test_global_connect_existing_new_and_leave(bus, make_client):
    _a, ra = connected(make_client, bus.port, 20, 0, add_info="A-info 中文")
    b, rb = connected(make_client, bus.port, 21, 1, ctype=7, add_info="B-info")
    # A hears about the newcomer from the bus (cmd 9, status 1) ...
    new = ra.wait("global", lambda e: e.unit == 21)[0]
    assert new == GlobalConnect(21, 1, 7, BUS_UNIT, codec.GC_CONNECTED, "B-info")
    # ... and B learns about A from A's automatic cmd 10 reply (status 2)
    old = rb.wait("global", lambda e: e.unit == 20)[0]
    assert old == GlobalConnect(20, 0, 19, BUS_UNIT, codec.GC_EXISTING, "A-info 中文")
    b.stop()
    gone = ra.wait("global", lambda e: e.unit == 21 and e.status == codec.GC_DISCONNECTED)[0]
    assert (gone.client, gone.type, gone.add_info) == (1, 7, "B-info")
    # nobody reports itself
    assert not [e for e in ra.of("global") if e.unit == 20]
    assert not [e for e in rb.of("global") if e.unit == 21]


def test_data_arrives_with_exact_bytes_and_header(bus, make_client):
    a, _ra = connected(make_client, bus.port, 20, 0)
    b, rb = connected(make_client, bus.port, 21, 1, ctype=5)
    payload = bytes(range(256)) * 3 + b"\x00tail"
    a.send_data(b.config.address, 77, 3, payload)
    a.send_data(Address(21, 1, -1), 1, codec.CMDTYPE_RPC, b"")
    got = rb.wait("packet", count=2)
    assert (got[0].cmd, got[0].cmdtype, got[0].src, got[0].body) == (77, 3, Address(20, 0, 19), payload)
    assert (got[1].cmd, got[1].cmdtype, got[1].body) == (1, codec.CMDTYPE_RPC, b"")
    assert got[1].dst == Address(21, 1, -1)


def test_dst_filter_with_client_wildcard(bus, make_client):
    a, _ra = connected(make_client, bus.port, 20, 0)
    _b, rb = connected(make_client, bus.port, 21, 1, ctype=5)
    a.send_data(Address(21, -1, -1), 1, 3, b"type -1 is no wildcard")  # bus forwards, client drops
    a.send_data(Address(21, -1, 5), 2, 3, b"my type")
    a.send_data(Address(21, 1, 9), 3, 3, b"client id given")  # type not checked then
    got = rb.wait("packet", count=2)
    a.ping(Address(21, 1, 5), b"sync")  # everything before it has been routed once its ack is seen
    rb.wait("packet", lambda p: p.cmd == codec.CMD_PING)
    assert [p.body for p in rb.of("packet") if p.cmdtype == 3] == [b"my type", b"client id given"]
    assert [p.cmd for p in got] == [2, 3]


def test_notify_reaches_ipsc_role_client_fully_decoded(bus, make_client):
    a, _ra = connected(make_client, bus.port, 20, 0)
    _ipsc, ri = connected(make_client, bus.port, IPSC_UNIT, 2, ctype=codec.CLIENT_TYPE_IPSC)
    param = '{"jsonrpc":"2.0","result":"中文"}'.encode("gbk")
    invoke_id = a.send_notify(IPSC_UNIT, 2, "项目1", "标题 Title", param, expires_ms=5000, mode=0)
    second = a.send_notify(IPSC_UNIT, 2, "P", "T", b"", expires_ms=0, mode=1)
    assert invoke_id >= 1 and second == invoke_id + 1
    got = ri.wait("packet", is_cmd(codec.CMD_NOTIFY, codec.CMDTYPE_SYSTEM), count=2)
    pkt = got[0]
    assert pkt.src == Address(20, 0, 19)
    assert pkt.dst == Address(IPSC_UNIT, 2, codec.CLIENT_TYPE_IPSC)
    msg = codec.decode_notify(pkt.body, "gbk")
    assert msg == codec.Notify("项目1", "标题 Title", param, invoke_id, 0, 5000)
    assert codec.decode_notify(got[1].body) == codec.Notify("P", "T", b"", second, 1, 0)
    # any unit and client type are allowed for notify (sbusr replies to net clients too)
    _c, rc = connected(make_client, bus.port, 22, 0, ctype=19)
    a.send_notify(22, 0, "P", "T", b"x", client_type=19)
    assert codec.decode_notify(rc.wait("packet")[0].body).param == b"x"


def test_ping_is_answered_automatically_and_delivered(bus, make_client):
    a, ra = connected(make_client, bus.port, 20, 0)
    b, rb = connected(make_client, bus.port, 21, 1, ctype=5)
    a.ping(b.config.address, b"PINGDATA")
    ack = ra.wait("packet", is_cmd(codec.CMD_PING_ACK, codec.CMDTYPE_SYSTEM))[0]
    assert (ack.src, ack.dst, ack.body) == (Address(21, 1, 5), Address(20, 0, 19), b"PINGDATA")
    ping = rb.wait("packet", is_cmd(codec.CMD_PING, codec.CMDTYPE_SYSTEM))[0]
    assert (ping.src, ping.body) == (Address(20, 0, 19), b"PINGDATA")


# ------------------------------------------------------------------ remote flows


@pytest.fixture
def flow_pair(bus, make_client):
    """A caller (unit 20) and a fake IPSC (unit 1, client 0, type 2) that acts on the flow name."""
    caller, rc = connected(make_client, bus.port, 20, 0)
    ipsc, ri = make_client(bus.port, IPSC_UNIT, 0, ctype=codec.CLIENT_TYPE_IPSC, start=False)

    def serve(pkt: Packet) -> None:
        if (pkt.cmd, pkt.cmdtype) != (codec.CMD_CALL_FLOW, codec.CMDTYPE_SYSTEM):
            return
        call = flow_messages.decode_call_flow(pkt.body)
        if call.flow == "ok":
            ipsc.send_flow_ack(pkt.src, call.project, call.invoke_id, 1, b"")
            ipsc.send_flow_result(pkt.src, call.project, call.invoke_id, b'["ok",1]')
        elif call.flow == "bad":
            ipsc.send_flow_ack(pkt.src, call.project, call.invoke_id, -3, "flow not found 中文".encode("gbk"))
        elif call.flow == "noresult":
            ipsc.send_flow_ack(pkt.src, call.project, call.invoke_id, 1, b"")

    ri.on_packet_hook = serve
    ipsc.start()
    assert ipsc.wait_connected(WAIT)
    return caller, rc, ipsc, ri


def test_flow_ack_then_result(flow_pair):
    caller, _rc, _ipsc, ri = flow_pair
    params = '[1,"abc","中文"]'.encode("gbk")
    inv = caller.invoke_flow(IPSC_UNIT, 0, "Project1", "ok", params, want_result=True, ack_timeout=WAIT,
                             result_timeout=WAIT)
    ack = inv.ack.result(WAIT)
    assert (ack.invoke_id, ack.ack, ack.message) == (inv.invoke_id, 1, "")
    assert ack.source == Address(IPSC_UNIT, 0, codec.CLIENT_TYPE_IPSC)
    assert inv.result is not None and inv.result.result(WAIT) == '["ok",1]'
    call = flow_messages.decode_call_flow(ri.of("packet")[0].body)
    assert call == flow_messages.CallFlow("Project1", "ok", params, inv.invoke_id, 0, -1)
    assert caller.client.pending_flows == 0


def test_flow_error_ack_fails_the_result_at_once(flow_pair):
    caller, _rc, _ipsc, _ri = flow_pair
    inv = caller.invoke_flow(IPSC_UNIT, 0, "Project1", "bad", b"[]", want_result=True, ack_timeout=WAIT,
                             result_timeout=120)
    ack = inv.ack.result(WAIT)
    assert (ack.ack, ack.message) == (-3, "flow not found 中文")
    assert inv.result is not None
    with pytest.raises(BusError) as err:
        inv.result.result(WAIT)  # long before the 120 s result timeout
    assert err.value.code == -3 and not isinstance(err.value, FlowTimeout)
    assert caller.client.pending_flows == 0


def test_flow_ack_timeout_and_late_ack_ignored(flow_pair):
    caller, rc, ipsc, ri = flow_pair
    inv = caller.invoke_flow(IPSC_UNIT, 0, "P", "silent", b"[]", want_result=False, ack_timeout=0.3)
    assert inv.result is None
    with pytest.raises(FlowTimeout) as err:
        inv.ack.result(WAIT)
    assert err.value.code == codec.ERR_TIMEOUT
    assert caller.client.pending_flows == 0
    ri.wait("packet")  # the request did reach the IPSC
    ipsc.send_flow_ack(caller.config.address, "P", inv.invoke_id, 1, b"late")
    caller.ping(ipsc.config.address, b"still alive")
    rc.wait("packet", lambda p: p.cmd == codec.CMD_PING_ACK)
    assert caller.connected


def test_flow_result_timeout(flow_pair):
    caller, _rc, _ipsc, _ri = flow_pair
    inv = caller.invoke_flow(IPSC_UNIT, 0, "P", "noresult", b"[]", want_result=True, ack_timeout=WAIT,
                             result_timeout=0.3)
    assert inv.ack.result(WAIT).ack == 1
    assert inv.result is not None
    with pytest.raises(FlowTimeout) as err:
        inv.result.result(WAIT)
    assert err.value.code == codec.ERR_TIMEOUT
    assert caller.client.pending_flows == 0


def test_flow_cancelled_by_caller_is_cleaned_up(flow_pair):
    caller, _rc, _ipsc, _ri = flow_pair
    inv = caller.invoke_flow(IPSC_UNIT, 0, "P", "silent", b"[]", want_result=True, ack_timeout=0.2,
                             result_timeout=0.3)
    assert inv.ack.cancel() and inv.result is not None and inv.result.cancel()
    other = caller.invoke_flow(IPSC_UNIT, 0, "P", "ok", b"[]", want_result=True, ack_timeout=WAIT)
    assert other.result is not None and other.result.result(WAIT) == '["ok",1]'
    assert eventually(lambda: caller.client.pending_flows == 0)  # both timers fired and cleaned up


def test_flow_target_must_be_an_ipsc_unit(bus, make_client):
    a, _ra = connected(make_client, bus.port, 20, 0)
    with pytest.raises(BusError) as err:
        a.invoke_flow(21, 0, "P", "F", b"[]", want_result=False, ack_timeout=1)
    assert err.value.code == codec.ERR_UNIT
    with pytest.raises(codec.CodecError):
        a.invoke_flow(IPSC_UNIT, 0, "P" * 40, "F", b"[]", want_result=False, ack_timeout=1)


# ------------------------------------------------------------------ failures and reconnection


def test_not_connected_without_a_bus(make_client):
    port = free_port()
    tc, rec = make_client(port, 20, 0)
    assert rec.wait("failed") == [codec.ERR_ESTABLISH_CONNECT]
    assert not tc.wait_connected(0.5)
    dst = Address(21, 0, 19)
    with pytest.raises(NotConnected) as err:
        tc.send_data(dst, 1, 3, b"x")
    assert err.value.code == codec.ERR_NOT_CONNECTED
    for call in (lambda: tc.ping(dst, b"x"),
                 lambda: tc.send_notify(0, 0, "P", "T", b"x"),
                 lambda: tc.invoke_flow(0, 0, "P", "F", b"[]", want_result=True, ack_timeout=1),
                 lambda: tc.send_flow_ack(dst, "P", 1, 1)):
        with pytest.raises(NotConnected):
            call()
    threading.Event().wait(0.5)  # several more refused attempts ...
    assert rec.of("failed") == [codec.ERR_ESTABLISH_CONNECT]  # ... reported once per series
    assert rec.of("connect") == [] and rec.of("disconnect") == []


def test_reconnects_by_itself_after_bus_restart(make_client):
    with BusProcess(unit_id=2) as proc:
        a, ra = connected(make_client, proc.port, 20, 0)
        b, rb = connected(make_client, proc.port, 21, 0)
        proc.restart()
        for rec in (ra, rb):
            rec.wait("disconnect")
            rec.wait("connect", count=2)
        assert a.wait_connected(WAIT) and b.wait_connected(WAIT)
        a.send_data(b.config.address, 9, 3, b"after restart")
        assert rb.wait("packet", lambda p: p.body == b"after restart")[0].src == a.config.address
        assert ra.of("disconnect") == [None] and rb.of("disconnect") == [None]
        assert ra.of("connect") == [2, 2]


def test_slave_is_used_when_master_is_down(make_client):
    with BusThread(host="127.0.0.1", port=0, unit_id=7) as slave:
        tc, rec = connected(make_client, free_port(), 20, 0, slave_host="127.0.0.1", slave_port=slave.port)
        assert rec.of("connect") == [7] and tc.access_point == 7
        assert codec.ERR_ESTABLISH_CONNECT in rec.of("failed")
        (info,) = slave.clients()
        assert info.connect_index == 1


def test_refused_registration_is_retried(make_client):
    with BusThread(host="127.0.0.1", port=0, unit_id=0, users={"usr": "pwd"}) as b:
        _tc, rec = make_client(b.port, 20, 0, user="usr", password="wrong")
        assert rec.wait("failed", count=2) == [codec.ERR_PWD, codec.ERR_PWD]
        assert rec.of("connect") == []
        good, _rg = connected(make_client, b.port, 21, 0, user="usr", password="pwd")
        assert good.access_point == 0


def test_duplicate_registration_waits_for_the_slot(bus, make_client):
    first, _r1 = connected(make_client, bus.port, 20, 0)
    second, r2 = make_client(bus.port, 20, 0, duplicate_retry=0.2)
    assert r2.wait("failed", count=2)[:2] == [codec.ERR_CONNECTED, codec.ERR_CONNECTED]
    assert not second.connected
    first.stop()
    assert second.wait_connected(WAIT)


# ------------------------------------------------------------------ raw servers (asyncio core)


class RawBus:
    """A scripted server: ``script(conn_no, packet, writer)`` decides what to answer."""

    def __init__(self, script: Callable[[int, Packet, asyncio.StreamWriter], None]) -> None:
        self.script = script
        self.connections = 0
        self.registers: list[codec.Register] = []
        self.heartbeats: list[Packet] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawBus:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = self.connections
        decoder = codec.FrameDecoder()
        try:
            while data := await reader.read(65536):
                for pkt, _raw in decoder.feed(data):
                    if pkt.cmd == codec.CMD_REGISTER and pkt.cmdtype == 0:
                        self.registers.append(codec.decode_register(pkt.body))
                    elif pkt.cmd == codec.CMD_HEARTBEAT and pkt.cmdtype == 0:
                        self.heartbeats.append(pkt)
                    self.script(n, pkt, writer)
        except (ConnectionError, codec.CodecError):
            pass
        finally:
            writer.close()


def ack_register(pkt: Packet, writer: asyncio.StreamWriter, unit: int) -> None:
    writer.write(codec.encode_register_ack(Address(unit, 0, 1), pkt.src, 0))


async def until(pred: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not pred():
            await asyncio.sleep(0.01)


def test_garbage_from_the_server_drops_the_link_and_client_reconnects():
    async def main() -> None:
        def script(n: int, pkt: Packet, writer: asyncio.StreamWriter) -> None:
            if (pkt.cmd, pkt.cmdtype) == (codec.CMD_REGISTER, 0):
                ack_register(pkt, writer, 5)
            elif (pkt.cmd, pkt.cmdtype) == (codec.CMD_HEARTBEAT, 0) and n == 1:
                writer.write(b"\x00" * 40)  # not a SmartBus header

        async with RawBus(script) as raw:
            rec = Recorder()
            client = SmartBusClient(ClientConfig("127.0.0.1", raw.port, 20), rec.handlers())
            client.backoff_initial = 0.05
            client.heartbeat_interval = 0.05
            await client.start()
            try:
                await until(lambda: len(rec.of("connect")) == 2)
                assert rec.of("disconnect") == [None]
                assert client.connected and raw.connections == 2
                first, second = raw.registers
                assert (first.access_point, second.access_point) == (-1, 5)
                assert (first.version, first.connect_index) == (codec.VENDOR_VERSION, 0)
                assert first.pid > 0
            finally:
                await client.stop()

    asyncio.run(main())


def test_silent_bus_is_dropped_by_the_liveness_rule_and_heartbeats_go_to_the_access_point():
    async def main() -> None:
        def script(n: int, pkt: Packet, writer: asyncio.StreamWriter) -> None:
            if (pkt.cmd, pkt.cmdtype) == (codec.CMD_REGISTER, 0):
                ack_register(pkt, writer, 4)  # and never anything else

        async with RawBus(script) as raw:
            rec = Recorder()
            client = SmartBusClient(ClientConfig("127.0.0.1", raw.port, 20, 3, 19), rec.handlers())
            client.heartbeat_interval = 0.05
            client.liveness_timeout = 0.5
            client.backoff_initial = 0.05
            await client.start()
            try:
                await until(lambda: len(rec.of("connect")) >= 2)
                assert rec.of("disconnect")
                hb = raw.heartbeats[0]
                assert hb.src == Address(20, 3, 19) and hb.dst == Address(4, -1, codec.CLIENT_TYPE_NODE)
                counts = [struct.unpack_from("<i", p.body)[0] for p in raw.heartbeats[:3]]
                assert counts == [0, 1, 2]
            finally:
                await client.stop()
            assert not client.connected

    asyncio.run(main())


def test_async_api_sends_and_refuses_when_not_connected():
    async def main() -> None:
        seen: list[Packet] = []

        def script(n: int, pkt: Packet, writer: asyncio.StreamWriter) -> None:
            if (pkt.cmd, pkt.cmdtype) == (codec.CMD_REGISTER, 0):
                ack_register(pkt, writer, 0)
            elif pkt.cmdtype != 0:
                seen.append(pkt)

        client = SmartBusClient(ClientConfig("127.0.0.1", free_port(), 20))
        with pytest.raises(NotConnected):
            await client.send_data(Address(21, 0, 19), 1, 3, b"x")
        async with RawBus(script) as raw:
            client = SmartBusClient(ClientConfig("127.0.0.1", raw.port, 20))
            await client.start()
            try:
                assert await client.wait_connected(WAIT)
                await client.send_data(Address(21, 0, 19), 1, 3, b"abc")
                nid = await client.send_notify(21, 0, "P", "T", b"n", client_type=19)
                await client.send_flow_result(Address(21, 0, 19), "P", 7, b"[1]")
                await until(lambda: len(seen) == 3)
                assert seen[0].body == b"abc"
                assert codec.decode_notify(seen[1].body).invoke_id == nid
                assert flow_messages.decode_flow_result(seen[2].body).param == b"[1]"
                with pytest.raises(codec.CodecError):
                    await client.send_data(Address(21, 0, 19), 1, 0, b"cmdtype 0 is reserved")
            finally:
                await client.stop()

    asyncio.run(main())


def test_impossible_global_connect_notices_are_ignored_with_one_log_line(caplog):
    caplog.set_level(logging.WARNING, logger="sbusr.smartbus.native.client")
    bad = [codec.GlobalConnect(60, 1, 2, 4, codec.GC_CONNECTED, "unit 60"),
           codec.GlobalConnect(-3, 1, 2, 4, codec.GC_CONNECTED, "unit -3"),
           codec.GlobalConnect(5, -127, 22, 4, codec.GC_CONNECTED, "client -127"),
           codec.GlobalConnect(5, 9, 2, 4, 7, "status 7")]
    good = codec.GlobalConnect(5, 9, 2, 4, codec.GC_CONNECTED, "real")
    replies: list[Packet] = []

    async def main() -> None:
        def script(n: int, pkt: Packet, writer: asyncio.StreamWriter) -> None:
            if (pkt.cmd, pkt.cmdtype) == (codec.CMD_REGISTER, 0):
                ack_register(pkt, writer, 4)
                for _ in range(25):
                    for event in bad:
                        writer.write(codec.encode_global_connect(event.address, pkt.src, event))
                writer.write(codec.encode_global_connect(good.address, pkt.src, good))
            elif pkt.cmd == codec.CMD_GLOBAL_CONNECT_REPLY:
                replies.append(pkt)

        async with RawBus(script) as raw:
            rec = Recorder()
            client = SmartBusClient(ClientConfig("127.0.0.1", raw.port, 20), rec.handlers())
            await client.start()
            try:
                await until(lambda: bool(rec.of("global")) and bool(replies))
                await asyncio.sleep(0.2)  # anything wrongly passed on would have arrived by now
            finally:
                await client.stop()
        assert [ev.add_info for ev in rec.of("global")] == ["real"]
        assert [pkt.dst for pkt in replies] == [good.address]  # no cmd-10 reply to a ghost

    asyncio.run(main())
    ignored = [r for r in caplog.records if "ignored a global-connect notice" in r.getMessage()]
    assert len(ignored) == 1, [r.getMessage() for r in ignored]


def test_flood_of_malformed_flow_packets_is_one_warning_per_sender_and_kind(caplog):
    caplog.set_level(logging.WARNING, logger="sbusr.smartbus.native.client")
    ipsc = Address(0, 1, codec.CLIENT_TYPE_IPSC)
    done = threading.Event()

    async def main() -> None:
        def script(n: int, pkt: Packet, writer: asyncio.StreamWriter) -> None:
            if (pkt.cmd, pkt.cmdtype) == (codec.CMD_REGISTER, 0):
                ack_register(pkt, writer, 4)
                for _ in range(200):  # too short to decode, from one hostile IPSC
                    writer.write(codec.encode_packet(codec.CMD_CALL_FLOW_ACK, codec.CMDTYPE_SYSTEM, ipsc,
                                                     pkt.src, b"\x0d\x00"))
                    writer.write(codec.encode_packet(codec.CMD_CALL_FLOW_RET, codec.CMDTYPE_SYSTEM, ipsc,
                                                     pkt.src, b"\x0c"))
                writer.write(codec.encode_data(ipsc, pkt.src, 1, 3, b"after the flood"))

        async with RawBus(script) as raw:
            rec = Recorder()
            rec.on_packet_hook = lambda p: done.set() if p.body == b"after the flood" else None
            client = SmartBusClient(ClientConfig("127.0.0.1", raw.port, 20), rec.handlers())
            await client.start()
            try:
                await until(done.is_set)
            finally:
                await client.stop()

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "malformed flow" in r.getMessage()]
    assert len(lines) == 2 and {"ack" in lines[0], "ack" in lines[1]} == {True, False}, lines
