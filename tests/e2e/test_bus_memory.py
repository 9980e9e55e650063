"""``sbusr-bus --memory-budget``: under hostile connections the bus process stays inside the budget
as ``top`` shows it (resident memory), and well-behaved clients keep being served.

The peak is the kernel's own high-water mark of the bus's resident set (VmHWM), so no sampling
can miss a short spike; psutil gives the resident set at rest.
"""

from __future__ import annotations

import socket
import threading

import psutil
import pytest

from sbusr.smartbus import codec as c
from sbusr.testing.processes import BusProcess
from tests.e2e.test_bus import Peer

A = c.Address
MIB = 2**20
BUDGET_MIB = 64
CHUNK = 256 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident set in bytes (VmHWM, kept by the kernel)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def _send_until_closed(sock: socket.socket, chunks, stop: threading.Event) -> None:
    try:
        for chunk in chunks:
            if stop.is_set():
                return
            sock.sendall(chunk)
    except OSError:
        pass  # dropped by the bus: what a hostile peer gets


def _round_trip(a: Peer, b: Peer, body: bytes) -> None:
    a.send(c.encode_data(a.addr, b.addr, 1, 3, body))
    pkt, _ = b.recv(lambda p: p.cmdtype == 3)
    assert pkt.body == body
    b.send(c.encode_data(b.addr, a.addr, 1, 3, body[::-1]))
    pkt, _ = a.recv(lambda p: p.cmdtype == 3)
    assert pkt.body == body[::-1]


@pytest.mark.timeout(300)
def test_hostile_connections_keep_the_bus_inside_its_memory_budget():
    with BusProcess(extra_args=["--memory-budget", str(BUDGET_MIB), "--idle-timeout", "0"]) as bus:
        at_rest = psutil.Process(bus.proc.pid).memory_info().rss
        good_a, good_b = Peer(bus.port, A(40, 0, 19)), Peer(bus.port, A(41, 0, 19))
        assert good_a.register() == 0 and good_b.register() == 0
        _round_trip(good_a, good_b, b"before")

        stop = threading.Event()
        threads: list[threading.Thread] = []
        hostile: list[socket.socket] = []
        payload = b"f" * (CHUNK - c.HEADER_SIZE)
        for i in range(4):
            # a slow reader: registered, tiny receive buffer, never reads
            reader = socket.socket()
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.connect(("127.0.0.1", bus.port))
            slow = Peer.__new__(Peer)
            slow.sock, slow.addr, slow.dec, slow.pending = reader, A(20 + i, 0, 19), c.FrameDecoder(), []
            assert slow.register() == 0
            hostile.append(reader)
            # a flooder sending it 100 MiB
            flooder = Peer(bus.port, A(30 + i, 0, 19))
            assert flooder.register() == 0
            hostile.append(flooder.sock)
            packet = c.encode_data(flooder.addr, slow.addr, 1, 3, payload)
            threads.append(threading.Thread(target=_send_until_closed,
                                            args=(flooder.sock, [packet] * 400, stop)))
        for i in range(4):
            # big frames: announced (32 or 3 MiB) and never finished, or whole 3 MiB packets to a slow reader
            big = Peer(bus.port, A(44 + i, 0, 19))
            assert big.register() == 0
            hostile.append(big.sock)
            if i < 2:
                size = 32 * MIB if i == 0 else 3 * MIB
                head = c.encode_header(1, 3, big.addr, good_a.addr, size - c.HEADER_SIZE)
                chunks = [head] + [b"x" * CHUNK] * (size // CHUNK - 1)
            else:
                chunks = [c.encode_data(big.addr, A(20 + i, 0, 19), 1, 3, b"b" * 3 * MIB)] * 30
            threads.append(threading.Thread(target=_send_until_closed, args=(big.sock, chunks, stop)))
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(240)
            assert not any(t.is_alive() for t in threads), "hostile senders still running"
            # the well-behaved pair is still registered and served
            _round_trip(good_a, good_b, b"after")
        finally:
            stop.set()
            for sock in hostile:
                sock.close()
        peak = peak_rss(bus.proc.pid)
        print(f"bus RSS at rest {at_rest / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB, budget {BUDGET_MIB} MiB")
        assert peak <= BUDGET_MIB * MIB, bus.output()[-3000:]
        assert "memory budget" in bus.output()
        _round_trip(good_a, good_b, b"at the end")


def test_a_budget_the_bus_does_not_fit_in_is_refused_at_start():
    bus = BusProcess(extra_args=["--memory-budget", "8"])
    with pytest.raises(RuntimeError, match="exited with 2"):
        bus.start()
    assert "leaves no room for connection buffers" in bus.output()


def test_help_says_what_the_budget_bounds():
    from sbusr.cmd import bus as bus_cmd

    text = " ".join(bus_cmd.build_parser().format_help().split())
    assert "resident memory (RSS, what top shows)" in text
