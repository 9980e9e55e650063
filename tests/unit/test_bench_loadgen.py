"""The load generator's bookkeeping: a phase ends only when nothing more can be sent and all is answered.

The clock is not driven: every phase here lies wholly in the past, which is exactly what a busy
machine produces when the loop runs a tick after the window has closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from sbusr.bench import loadgen
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address
from sbusr.smartbus.interface import ClientConfig

SERVER = Address(19, 1, 19)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    ev = asyncio.new_event_loop()
    yield ev
    ev.close()


def _gen(sent: list[bytes]) -> loadgen.LoadGen:
    gen = loadgen.LoadGen(ClientConfig(host="127.0.0.1", port=1, unit_id=1, client_id=0,
                                       client_type=codec.CLIENT_TYPE_IPSC))
    gen.client.write = sent.append  # type: ignore[method-assign]  # record instead of a socket
    return gen


def _phase(gen: loadgen.LoadGen, loop: asyncio.AbstractEventLoop, rate: float) -> loadgen.Phase:
    """A phase whose window closed 10 s ago."""
    spec = {"body": '{"jsonrpc":"2.0","method":"echo","params":["x"],"id":%d}', "target": [19, 1],
            "kind": "rpc", "rate": rate, "callers": 0 if rate else 1, "warmup": 0.0, "duration": 1.0}
    phase = loadgen.Phase(spec, loadgen._perf() - 11.0)
    phase.done = loop.create_future()
    gen.phase = phase
    return phase


def _reply(gen: loadgen.LoadGen, rid: int) -> None:
    raw = codec.encode_notify(SERVER, gen.client.address, codec.Notify("", str(rid), b'{"result":"x"}'))
    gen._on_packet(codec.decode_packet(raw))


def test_open_loop_is_not_drained_while_a_late_tick_still_has_slots_to_send(loop):
    sent: list[bytes] = []
    gen = _gen(sent)
    phase = _phase(gen, loop, rate=10.0)
    gen._send(phase)  # the slot before: sent, then answered after the window
    _reply(gen, 1)
    assert not phase.done.done()  # the tick for the window's last slots has not run yet
    gen._tick(phase, loop, phase.window_end - 0.05)  # run late: sends the last slot, ends the schedule
    assert len(sent) == 2 and list(phase.inflight) == [2]
    assert not phase.done.done()  # the last request is still unanswered
    _reply(gen, 2)
    assert phase.done.done()
    assert phase.sent == phase.late == 2 and not phase.inflight


def test_open_loop_with_nothing_in_flight_is_drained_when_its_schedule_ends(loop):
    gen = _gen([])
    phase = _phase(gen, loop, rate=10.0)
    gen._send(phase)
    _reply(gen, 1)
    gen._tick(phase, loop, phase.window_end)  # no slot left before the window's end
    assert phase.done.done() and phase.sent == 1


def test_closed_loop_is_drained_by_its_last_reply_after_the_window(loop):
    sent: list[bytes] = []
    gen = _gen(sent)
    phase = _phase(gen, loop, rate=0.0)
    gen._send(phase)
    _reply(gen, 1)
    assert phase.done.done()
    assert len(sent) == 1  # no next request once the window is over
