"""Development bus: registration, notices, routing, limits and the CLI, over raw sockets + the codec.

Negative routing checks ("X must not arrive") avoid sleeps: the sender follows the packet that must not
arrive with a marker that must, and the test asserts the marker is the first thing the receiver sees.
The bus handles one connection's packets in order, so anything wrongly routed would arrive first.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from sbusr.smartbus import codec as c
from sbusr.smartbus.bus import BusThread
from sbusr.testing.processes import BusProcess

A = c.Address
WAIT = 10.0
BUS_UNIT = 3


class Peer:
    """A hand-driven SmartBus client on a blocking socket."""

    def __init__(self, port: int, addr: A | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.addr = addr
        self.dec = c.FrameDecoder()
        self.pending: list[tuple[c.Packet, bytes]] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def register(self, addr: A | None = None, user: str = "", password: str = "", add_info: str = "") -> int:
        addr = addr or self.addr
        assert addr is not None
        self.addr = addr
        self.send(c.encode_register(addr, c.Register(0, c.VENDOR_VERSION, user, password, 1234, add_info)))
        pkt, _ = self.recv(lambda p: p.cmd == c.CMD_REGISTER_ACK and p.cmdtype == 0)
        self.last_ack = pkt
        return c.decode_register_ack(pkt.body)

    def recv(self, match: Callable[[c.Packet], bool] | None = None,
             timeout: float = WAIT) -> tuple[c.Packet, bytes]:
        """Next packet (skipping heartbeat acks and non-matching ones if ``match`` is given)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                pkt, raw = self.pending.pop(0)
                if pkt.cmd == c.CMD_HEARTBEAT_ACK and pkt.cmdtype == 0 and match is None:
                    continue
                if match is None or match(pkt):
                    return pkt, raw
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching packet")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the bus")
            self.pending.extend(self.dec.feed(chunk))

    def closed_by_bus(self, timeout: float = WAIT) -> bool:
        """True once the bus has closed this connection (other input is discarded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False
        return False

    def close(self) -> None:
        self.sock.close()


def gc_event(pkt: c.Packet) -> c.GlobalConnect:
    assert (pkt.cmd, pkt.cmdtype) == (c.CMD_GLOBAL_CONNECT, c.CMDTYPE_SYSTEM)
    return c.decode_global_connect(pkt.body)


def is_data(cmd: int) -> Callable[[c.Packet], bool]:
    return lambda p: p.cmdtype == 3 and p.cmd == cmd


def marker(src: A, dst: A) -> bytes:
    return c.encode_data(src, dst, 99, 3, b"marker")


def wait_for(cond: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def make_bus() -> Iterator[Callable[..., BusThread]]:
    started: list[BusThread] = []

    def make(**kwargs: object) -> BusThread:
        kwargs.setdefault("port", 0)
        kwargs.setdefault("unit_id", BUS_UNIT)
        bus = BusThread(**kwargs)
        bus.start()
        started.append(bus)
        return bus

    yield make
    for bus in started:
        bus.stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(port: int, addr: A | None = None) -> Peer:
        p = Peer(port, addr)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def bus(make_bus: Callable[..., BusThread]) -> BusThread:
    return make_bus()


def registered(peers: Callable[..., Peer], bus: BusThread, *addrs: A) -> list[Peer]:
    """Register peers one by one, consuming the join notices each earlier peer gets."""
    out: list[Peer] = []
    for addr in addrs:
        p = peers(bus.port, addr)
        assert p.register(add_info=f"info-{addr.unit}-{addr.client}") == 0
        for old in out:
            assert gc_event(old.recv(lambda q: q.cmd == c.CMD_GLOBAL_CONNECT)[0]).address == addr
        out.append(p)
    return out


# --------------------------------------------------------------------------- registration


def test_register_ok(bus, peers):
    p = peers(bus.port, A(20, 0, 19))
    assert p.register(user="usr", add_info="hello-ext") == 0
    ack = p.last_ack
    assert ack.src.unit == BUS_UNIT
    assert ack.dst == A(20, 0, 19)
    (info,) = bus.clients()
    assert (info.unit, info.client, info.type, info.add_info, info.user) == (20, 0, 19, "hello-ext", "usr")
    assert info.peer == f"127.0.0.1:{p.sock.getsockname()[1]}"


def test_ipsc_stand_in_registers_at_low_unit(bus, peers):
    assert peers(bus.port, A(0, 2, c.CLIENT_TYPE_IPSC)).register() == 0
    assert [i.address for i in bus.clients()] == [A(0, 2, c.CLIENT_TYPE_IPSC)]


@pytest.mark.parametrize(("users", "addr", "user", "pwd", "code"), [
    (None, A(48, 0, 19), "", "", c.ERR_UNIT),
    (None, A(-1, 0, 19), "", "", c.ERR_UNIT),
    (None, A(20, -1, 19), "", "", c.ERR_UNIT),
    ({"usr": "pwd"}, A(20, 0, 19), "nobody", "pwd", c.ERR_USER),
    ({"usr": "pwd"}, A(20, 0, 19), "usr", "wrong", c.ERR_PWD),
    ({"usr": "pwd"}, A(20, 0, 19), "usr", "pwd", 0),
])
def test_register_checks(make_bus, peers, users, addr, user, pwd, code):
    bus = make_bus(users=users)
    p = peers(bus.port, addr)
    assert p.register(user=user, password=pwd) == code
    if code:
        assert p.closed_by_bus()
        assert bus.clients() == []
    else:
        assert len(bus.clients()) == 1


def test_duplicate_refused_until_first_leaves(bus, peers):
    first = peers(bus.port, A(20, 0, 19))
    assert first.register() == 0
    dup = peers(bus.port, A(20, 0, 5))  # same unit/client, other type: still the same address
    assert dup.register() == c.ERR_CONNECTED
    assert dup.closed_by_bus()
    assert [i.peer for i in bus.clients()] == [f"127.0.0.1:{first.sock.getsockname()[1]}"]
    first.close()
    assert wait_for(lambda: bus.clients() == [])
    assert peers(bus.port, A(20, 0, 19)).register() == 0  # the vendor's 2 s retry now succeeds


def test_reregister_on_same_link(bus, peers):
    p = peers(bus.port, A(20, 0, 19))
    assert p.register() == 0
    assert p.register() == 0
    assert len(bus.clients()) == 1
    assert p.register(A(21, 0, 19)) == c.ERR_CONNECTED  # one link, one address
    assert p.closed_by_bus()
    assert bus.clients() == []


def test_bad_register_body_drops_connection(bus, peers):
    other = registered(peers, bus, A(20, 0, 19))[0]
    p = peers(bus.port)
    p.send(c.encode_packet(c.CMD_REGISTER, 0, A(21, 0, 19), A(0, 0, 0), b"short"))
    assert p.closed_by_bus()
    other.send(c.encode_ping(other.addr, A(BUS_UNIT, 0, 1), b"alive"))
    assert other.recv()[0].cmd == c.CMD_PING_ACK


# --------------------------------------------------------------------------- global connect


def test_global_connect_join_and_leave(bus, peers):
    a = peers(bus.port, A(20, 0, 19))
    assert a.register(add_info="A-info") == 0
    b = peers(bus.port, A(19, 1, 2))
    assert b.register(add_info="B-info 中文") == 0

    pkt, _ = a.recv()
    ev = gc_event(pkt)
    assert (ev.unit, ev.client, ev.type, ev.access_point, ev.status, ev.add_info) == \
        (19, 1, 2, BUS_UNIT, c.GC_CONNECTED, "B-info 中文")
    assert pkt.src == A(19, 1, 2) and pkt.dst == A(20, 0, 19)

    # a's library answers with cmd 10 to the newcomer; the bus routes it like any packet
    reply = c.encode_global_connect(a.addr, b.addr, c.GlobalConnect(20, 0, 19, BUS_UNIT, c.GC_EXISTING,
                                                                    "A-info"), reply=True)
    a.send(reply)
    pkt, raw = b.recv()
    assert raw == reply  # b got no notice about itself, and no status-2 list from the bus
    assert c.decode_global_connect(pkt.body).status == c.GC_EXISTING

    b.close()
    ev = gc_event(a.recv()[0])
    assert (ev.unit, ev.client, ev.type, ev.status, ev.add_info) == \
        (19, 1, 2, c.GC_DISCONNECTED, "B-info 中文")
    assert [i.address for i in bus.clients()] == [a.addr]


def test_no_leave_notice_for_refused_or_unregistered(bus, peers):
    a = registered(peers, bus, A(20, 0, 19))[0]
    stranger = peers(bus.port)
    stranger.send(b"\x15\x5b" + b"\xff" * 30)
    assert stranger.closed_by_bus()
    dup = peers(bus.port, A(20, 0, 19))
    assert dup.register() == c.ERR_CONNECTED
    assert dup.closed_by_bus()
    b = peers(bus.port, A(21, 0, 19))
    assert b.register() == 0
    ev = gc_event(a.recv()[0])  # the first thing a hears about is b joining, nothing about the others
    assert (ev.unit, ev.status) == (21, c.GC_CONNECTED)


# --------------------------------------------------------------------------- routing


def test_route_exact_address_unchanged_with_padding(bus, peers):
    a, b, other = registered(peers, bus, A(20, 0, 19), A(19, 1, 2), A(19, 2, 2))
    body = b"abc"
    # vendor style: packet_size = 20 + datalen + (datalen & 3), garbage padding and reserved bytes
    raw = bytearray(c.encode_header(1, 211, a.addr, A(19, 1, -1), len(body), 20 + 3 + 3))
    raw += body + b"\x69\x5f\x49"
    raw[10:12] = b"\x5f\xf7"
    raw = bytes(raw)
    a.send(raw)
    pkt, got = b.recv()
    assert got == raw
    assert pkt.body == body
    a.send(marker(a.addr, other.addr))
    assert other.recv()[0].body == b"marker"  # the exact-address packet did not go to b's neighbour


def test_route_client_wildcard_by_type(bus, peers):
    a, t2a, t2b, t5 = registered(peers, bus, A(20, 0, 19), A(19, 1, 2), A(19, 2, 2), A(19, 3, 5))
    data = c.encode_data(a.addr, A(19, -1, 2), 7, 3, b"to all type 2")
    a.send(data)
    assert t2a.recv()[1] == data
    assert t2b.recv()[1] == data
    a.send(marker(a.addr, t5.addr))
    assert t5.recv()[0].body == b"marker"

    everyone = c.encode_data(a.addr, A(19, -1, -1), 8, 3, b"whole unit")
    a.send(everyone)
    for p in (t2a, t2b, t5):
        assert p.recv()[1] == everyone


def test_route_all_units_never_echoes(bus, peers):
    a, b, d = registered(peers, bus, A(20, 0, 19), A(21, 0, 19), A(22, 4, 7))
    data = c.encode_data(a.addr, A(-1, -1, 19), 5, 3, b"all type 19")
    a.send(data)
    assert b.recv()[1] == data
    by_client = c.encode_data(a.addr, A(-1, 4, -1), 6, 3, b"client 4 anywhere")
    a.send(by_client)
    assert d.recv()[1] == by_client
    a.send(marker(a.addr, b.addr))
    assert b.recv()[0].body == b"marker"  # b is client 0, not 4
    a.send(c.encode_data(a.addr, a.addr, 9, 3, b"to myself"))
    a.send(c.encode_ping(a.addr, A(BUS_UNIT, 0, 1), b"x"))
    assert a.recv()[0].cmd == c.CMD_PING_ACK  # a never got its own packets back


def test_absent_destination_dropped_bus_keeps_serving(bus, peers, caplog):
    caplog.set_level(logging.INFO, logger="sbusr.smartbus.bus")
    a, b = registered(peers, bus, A(20, 0, 19), A(21, 0, 19))
    for _ in range(200):  # a flood to nobody: dropped, and logged at a limited rate
        a.send(c.encode_data(a.addr, A(30, 0, 19), 1, 3, b"nobody home"))
    a.send(c.encode_data(a.addr, A(21, -1, 99), 1, 3, b"wrong type"))
    a.send(marker(a.addr, b.addr))
    assert b.recv()[0].body == b"marker"
    assert len(bus.clients()) == 2
    absent = [r for r in caplog.records if "no client at" in r.getMessage()]
    assert 1 <= len(absent) < 50


def test_split_and_coalesced_packets(bus, peers):
    a, b = registered(peers, bus, A(20, 0, 19), A(21, 0, 19))
    one = c.encode_data(a.addr, b.addr, 1, 3, b"split into single bytes")
    for i in range(len(one)):
        a.send(one[i:i + 1])
    many = [c.encode_data(a.addr, b.addr, 2, 3, bytes([n]) * n) for n in range(20)]
    a.send(b"".join(many))
    assert b.recv()[1] == one
    for expected in many:
        assert b.recv()[1] == expected


def test_big_packet_forwarded_whole(make_bus, peers):
    bus = make_bus(max_packet_size=4 * 1024 * 1024)
    a, b = registered(peers, bus, A(20, 0, 19), A(21, 0, 19))
    big = c.encode_data(a.addr, b.addr, 1, 3, bytes(range(256)) * 8192)  # 2 MiB
    a.send(big)
    a.send(marker(a.addr, b.addr))
    assert b.recv()[1] == big
    assert b.recv()[0].body == b"marker"


def test_interleaved_reads_from_many_peers_stay_apart(make_bus, peers):
    """Every connection's reads go through the bus's one receive buffer: bytes two peers send
    in alternating pieces must still arrive as each sender's own packets, whole and in order."""
    bus = make_bus(max_packet_size=4 * 1024 * 1024)
    a, b, sink = registered(peers, bus, A(20, 0, 19), A(21, 0, 19), A(22, 0, 19))
    from_a = [c.encode_data(a.addr, sink.addr, 1, 3, bytes([n]) * (300_000 + n)) for n in range(3)]
    from_b = [c.encode_data(b.addr, sink.addr, 2, 3, bytes([100 + n]) * (7 + n)) for n in range(50)]
    stream_a, stream_b = b"".join(from_a), b"".join(from_b)
    piece_a, piece_b = 65_537, 97
    for i in range(max(len(stream_a) // piece_a, len(stream_b) // piece_b) + 1):
        a.send(stream_a[i * piece_a:(i + 1) * piece_a])
        b.send(stream_b[i * piece_b:(i + 1) * piece_b])
    got = [sink.recv()[1] for _ in range(len(from_a) + len(from_b))]
    assert [raw for raw in got if raw in from_a] == from_a
    assert [raw for raw in got if raw in from_b] == from_b
    assert len(got) == len(from_a) + len(from_b)


def test_unregistered_sender_dropped(bus, peers):
    a, b = registered(peers, bus, A(20, 0, 19), A(21, 0, 19))
    stranger = peers(bus.port)
    stranger.send(c.encode_data(A(22, 0, 19), b.addr, 1, 3, b"sneaky"))
    stranger.send(c.encode_ping(A(22, 0, 19), A(BUS_UNIT, 0, 1), b"who"))
    stranger.send(c.encode_heartbeat(A(22, 0, 19), A(-1, -1, 1), c.Heartbeat(0)))
    pkt, _ = stranger.recv(lambda p: True)
    assert pkt.cmd == c.CMD_HEARTBEAT_ACK  # heartbeats are answered before registration; the ping is not
    a.send(marker(a.addr, b.addr))
    assert b.recv()[0].body == b"marker"


def test_ping_to_bus_answered(bus, peers):
    a = registered(peers, bus, A(20, 0, 19))[0]
    a.send(c.encode_ping(a.addr, A(BUS_UNIT, 0, c.CLIENT_TYPE_NODE), b"PINGDATA"))
    pkt, _ = a.recv()
    assert (pkt.cmd, pkt.cmdtype, pkt.body) == (c.CMD_PING_ACK, c.CMDTYPE_SYSTEM, b"PINGDATA")
    assert pkt.dst == a.addr and pkt.src.unit == BUS_UNIT


def test_ping_to_registered_client_at_bus_unit_is_routed(bus, peers):
    a, node = registered(peers, bus, A(20, 0, 19), A(BUS_UNIT, 0, c.CLIENT_TYPE_NODE))
    ping = c.encode_ping(a.addr, node.addr, b"for the node")
    a.send(ping)
    assert node.recv()[1] == ping


# --------------------------------------------------------------------------- heartbeat


def test_heartbeat_acks_rate_limited(bus, peers, caplog):
    a = registered(peers, bus, A(20, 0, 19))[0]
    caplog.set_level(logging.DEBUG, logger="sbusr.smartbus.bus")
    hb_dst = A(BUS_UNIT, -1, c.CLIENT_TYPE_NODE)
    burst = b"".join(c.encode_heartbeat(a.addr, hb_dst, c.Heartbeat(i, 0, 1_700_000_000 + i))
                     for i in range(500))
    a.send(burst)
    a.send(c.encode_ping(a.addr, A(BUS_UNIT, 0, 1), b"end"))  # answered after every heartbeat was handled
    acks = []
    while True:
        pkt, _ = a.recv(lambda p: True)
        if pkt.cmd == c.CMD_PING_ACK:
            break
        assert (pkt.cmd, pkt.cmdtype) == (c.CMD_HEARTBEAT_ACK, 0)
        acks.append(pkt)
    assert 1 <= len(acks) < 100
    first = acks[0]
    assert first.src == A(BUS_UNIT, 0, c.CLIENT_TYPE_NODE) and first.dst == a.addr
    assert c.decode_heartbeat(first.body) == c.Heartbeat(0, 0, 1_700_000_000)
    assert len(first.body) == 24
    assert len(caplog.records) < 10  # heartbeats are never logged one by one


# --------------------------------------------------------------------------- bad peers and limits


@pytest.mark.parametrize("junk", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    c.encode_header(1, 3, A(20, 0, 19), A(21, 0, 19), 4, 100_000_000) + b"abcd",  # absurd packet_size
    struct.pack("<HBBbbbbbb2xii", c.HEAD_FLAG, 1, 3, 19, 20, 0, 19, 21, 0, 8, 4),  # packet_size < 20
])
def test_garbage_disconnects_only_offender(make_bus, peers, junk):
    bus = make_bus(max_packet_size=1024 * 1024)
    a, b = registered(peers, bus, A(20, 0, 19), A(21, 0, 19))
    bad = peers(bus.port, A(22, 0, 19))
    assert bad.register() == 0
    for p in (a, b):
        assert gc_event(p.recv()[0]).unit == 22
    bad.send(junk)
    assert bad.closed_by_bus()
    for p in (a, b):
        ev = gc_event(p.recv()[0])
        assert (ev.unit, ev.status) == (22, c.GC_DISCONNECTED)
    data = c.encode_data(a.addr, b.addr, 1, 3, b"still here")
    a.send(data)
    assert b.recv()[1] == data


def test_slow_reader_disconnected_others_keep_working(make_bus, peers):
    bus = make_bus(max_write_buffer=256 * 1024)
    a, c_peer = registered(peers, bus, A(20, 0, 19), A(22, 0, 19))
    slow = peers(bus.port, A(21, 0, 19))
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert slow.register() == 0  # and then never reads again
    for p in (a, c_peer):
        assert gc_event(p.recv()[0]).unit == 21
    chunk = c.encode_data(a.addr, slow.addr, 1, 3, b"x" * 65536)
    out = bytearray()
    left_notice = None
    deadline = time.monotonic() + WAIT
    while left_notice is None and time.monotonic() < deadline:
        if not out:
            out += chunk
        readable, writable, _ = select.select([a.sock], [a.sock], [], 0.1)
        if writable:
            del out[:a.sock.send(out)]  # keep partial sends in order: the stream must stay framed
        if readable:
            for pkt, _ in a.dec.feed(a.sock.recv(65536)):
                if pkt.cmd == c.CMD_GLOBAL_CONNECT:
                    left_notice = gc_event(pkt)
    assert left_notice is not None, "slow reader was never dropped"
    assert (left_notice.unit, left_notice.status) == (21, c.GC_DISCONNECTED)
    assert {i.unit for i in bus.clients()} == {20, 22}
    ev = gc_event(c_peer.recv()[0])
    assert (ev.unit, ev.status) == (21, c.GC_DISCONNECTED)
    data = c.encode_data(c_peer.addr, a.addr, 2, 3, b"fine")
    c_peer.send(data)
    assert a.recv(lambda p: p.cmd == 2)[1] == data


def test_idle_connection_dropped(make_bus, peers):
    bus = make_bus(idle_timeout=0.3)
    quiet = peers(bus.port, A(20, 0, 19))
    assert quiet.register() == 0
    assert quiet.closed_by_bus()
    assert wait_for(lambda: bus.clients() == [])


def test_stop_closes_connections(make_bus, peers):
    bus = make_bus()
    p = registered(peers, bus, A(20, 0, 19))[0]
    bus.stop()
    assert p.closed_by_bus()


def test_bind_failure_raises(bus):
    other = BusThread(port=bus.port, unit_id=0)
    with pytest.raises(OSError):
        other.start()


def test_bad_arguments_rejected():
    with pytest.raises(ValueError):
        BusThread(unit_id=16)
    with pytest.raises(LookupError):
        BusThread(encoding="no-such-codec")


# --------------------------------------------------------------------------- CLI


def test_cli_subprocess_register_and_sigterm(peers):
    with BusProcess(unit_id=5, extra_args=["--user", "usr", "--password", "pwd"]) as proc:
        p = peers(proc.port, A(20, 0, 19))
        assert p.register(user="usr", password="pwd") == 0
        assert p.last_ack.src.unit == 5
        bad = peers(proc.port, A(21, 0, 19))
        assert bad.register(user="usr", password="nope") == c.ERR_PWD
        proc.restart()
        assert p.closed_by_bus()
        again = peers(proc.port, A(20, 0, 19))
        assert again.register(user="usr", password="pwd") == 0
    assert proc.returncode == 0
    out = proc.output()
    assert f"listening on 127.0.0.1:{proc.port}" in out
    assert "joined: unit 20 client 0 type 19" in out


def test_cli_rejects_bad_unit():
    proc = BusProcess(extra_args=["--unit-id", "16"])
    with pytest.raises(RuntimeError, match="exited with 2"):
        proc.start()


# --------------------------------------------------------------------------- a bus that cannot be lied to


def _notice(src: A, dst: A, about: c.GlobalConnect, reply: bool = False) -> bytes:
    return c.encode_global_connect(src, dst, about, reply=reply)


def test_client_sent_global_connect_notices_are_dropped(bus, peers, caplog):
    caplog.set_level(logging.WARNING, logger="sbusr.smartbus.bus")
    a, b = registered(peers, bus, A(20, 0, 19), A(0, 1, 2))
    forged_leave = c.GlobalConnect(0, 1, 2, BUS_UNIT, c.GC_DISCONNECTED, "")   # "IPSC 0/1 left"
    ghost = c.GlobalConnect(5, 9, 2, BUS_UNIT, c.GC_CONNECTED, "ghost")        # "5/9 joined"
    garbage = c.GlobalConnect(60, -127, 22, BUS_UNIT, 7, "")
    for _ in range(50):
        for event in (forged_leave, ghost, garbage):
            b.send(_notice(b.addr, a.addr, event))                 # addressed
            b.send(_notice(b.addr, A(-1, -1, -1), event))          # to everyone
    b.send(marker(b.addr, a.addr))
    assert a.recv()[0].body == b"marker"  # none of the 300 forged notices arrived first
    assert {i.address for i in bus.clients()} == {a.addr, b.addr}
    refused = [r for r in caplog.records if "come only from the bus" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]  # rate-limited per peer and reason


def test_global_connect_reply_only_about_its_sender_and_only_to_the_newcomer(bus, peers):
    a, b = registered(peers, bus, A(20, 0, 19), A(21, 0, 19))
    newcomer = peers(bus.port, A(22, 0, 19))
    assert newcomer.register() == 0
    for p in (a, b):
        assert gc_event(p.recv()[0]).address == newcomer.addr
    lie = c.GlobalConnect(5, 9, 2, BUS_UNIT, c.GC_EXISTING, "someone else")
    wrong_status = c.GlobalConnect(20, 0, 19, BUS_UNIT, c.GC_DISCONNECTED, "A")
    truth = c.GlobalConnect(20, 0, 19, BUS_UNIT, c.GC_EXISTING, "A")
    a.send(_notice(a.addr, newcomer.addr, lie, reply=True))           # describes another client
    a.send(_notice(a.addr, newcomer.addr, wrong_status, reply=True))  # a reply is status 2
    honest = _notice(a.addr, newcomer.addr, truth, reply=True)
    a.send(honest)
    a.send(honest)                                                    # only one reply per announcement
    a.send(marker(a.addr, newcomer.addr))
    assert newcomer.recv()[1] == honest
    assert newcomer.recv()[0].body == b"marker"
    # b joined after a: b was never told about a, so it owes a nothing
    b.send(_notice(b.addr, a.addr, c.GlobalConnect(21, 0, 19, BUS_UNIT, c.GC_EXISTING, "B"), reply=True))
    b.send(marker(b.addr, a.addr))
    assert a.recv()[0].body == b"marker"


def test_packets_under_another_clients_address_are_dropped(bus, peers, caplog):
    caplog.set_level(logging.WARNING, logger="sbusr.smartbus.bus")
    ipsc, server, attacker = registered(peers, bus, A(0, 1, 2), A(19, 1, 19), A(23, 0, 19))
    for _ in range(100):  # requests "from the IPSC", so the server's replies would go to the real IPSC
        attacker.send(c.encode_data(ipsc.addr, server.addr, 1, 211, b'{"id":"x","method":"echo"}'))
        attacker.send(c.encode_data(A(0, 1, 5), server.addr, 1, 211, b"{}"))  # right ids, wrong type
    attacker.send(marker(attacker.addr, server.addr))
    pkt, _ = server.recv()
    assert pkt.body == b"marker" and pkt.src == attacker.addr
    spoofed = [r for r in caplog.records if "not its registered address" in r.getMessage()]
    assert len(spoofed) == 1
    data = c.encode_data(ipsc.addr, server.addr, 1, 211, b"real")  # the real owner is still served
    ipsc.send(data)
    assert server.recv()[1] == data


def test_memory_budget_drops_the_biggest_offender_first(make_bus, peers, caplog):
    caplog.set_level(logging.WARNING, logger="sbusr.smartbus.bus")
    bus = make_bus(max_packet_size=16 * 1024 * 1024, memory_budget=3 * 1024 * 1024)
    watcher, small, big = registered(peers, bus, A(20, 0, 19), A(21, 0, 19), A(22, 0, 19))

    def start_huge_packet(p: Peer, body: int) -> None:  # a 10 MiB packet of which only `body` bytes come
        p.send(c.encode_header(1, 3, p.addr, watcher.addr, 10 * 1024 * 1024) + b"x" * body)

    start_huge_packet(small, 1_200_000)
    assert wait_for(lambda: sum(conn.decoder.buffered for conn in bus.bus._conns) >= 1_200_000)
    start_huge_packet(big, 2_500_000)  # 3.7 MB in all: over the 3 MiB budget
    assert big.closed_by_bus()
    ev = gc_event(watcher.recv()[0])
    assert (ev.address, ev.status) == (big.addr, c.GC_DISCONNECTED)
    assert {i.address for i in bus.clients()} == {watcher.addr, small.addr}  # the smaller one stays
    assert any("memory budget" in r.getMessage() for r in caplog.records)


def test_cli_memory_budget_option():
    from sbusr.cmd import bus as bus_cmd
    assert bus_cmd.build_parser().parse_args([]).memory_budget == 256
    assert bus_cmd.build_parser().parse_args(["--memory-budget", "64"]).memory_budget == 64
    with pytest.raises(SystemExit):
        bus_cmd.build_parser().parse_args(["--memory-budget", "0"])
