"""sbusr-bench end to end (short phases, behaviour only) and the framing fast path it relies on."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from sbusr.bench import procs
from sbusr.smartbus import codec as c
from sbusr.smartbus.codec import Address as A
from sbusr.testing.waiting import wait_for
from sbusr.util.procs import alive, descendants, rss_kb

RUN_TIMEOUT = 150


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def _assert_every_request_accounted_for(row: dict) -> None:
    """Under load a server may refuse calls ("busy") or answer late, but never fail otherwise, and
    every request gets a reply within the drain time."""
    assert row["send_errors"] == 0, row
    assert row["lost"] == 0, row
    assert row["sent"] == row["calls"] + row["error_replies"] + row["early"] + row["late"], row
    assert sum(row["error_codes"].values()) == row["error_replies"], row
    assert set(row["error_codes"]) <= {"-32002"}, row  # busy is the only expected error of an echo


def test_short_run_reports_every_phase_with_answered_calls():
    # a generous drain: on a busy machine replies can trail the window by seconds, and a reply that
    # comes is not an error; what must hold is that every request is answered or explained
    cmd = [sys.executable, "-m", "sbusr.bench", "--duration", "0.5", "--warmup", "0.1", "--drain", "60",
           "--concurrency", "1,2", "--cost-calls", "200", "--json", "-"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["config"]["concurrency"] == [1, 2]
    assert {"nproc", "python", "date"} <= result["machine"].keys()
    assert result["config"]["mode"] == "both"
    both = {(p["mode"], p["name"], p["concurrency"]): p for p in result["phases"]}
    assert set(both) == {(m, n, k) for m in ("thread", "process") for n in ("raw", "null", "payload")
                         for k in (1, 2)}
    for (mode, name, _conc), row in both.items():
        cpu = row["cpu_us_per_call"]
        assert cpu["bus"] >= 0 and cpu["load"] >= 0, row  # 10 ms clock ticks: small counts may read 0
        if name != "raw":  # an RPC costs the server something; in process mode the workers too
            assert cpu["server"] > 0, row
            assert (cpu["workers"] > 0) == (mode == "process"), row
    targets = result["targets"]
    assert targets["concurrency"] == 2 and targets["process_over_thread"] > 0
    assert targets["master_us_per_call"] > 0
    # every request of every phase and open loop, in both modes, is answered: a loaded machine may
    # make the server refuse some ("busy"), and those are the only errors the targets may count
    for row in [*result["phases"], *result["open_loop_by_mode"].values()]:
        _assert_every_request_accounted_for(row)
    assert targets["errors"] == sum(row["error_replies"] for row in [
        *result["phases"], *result["open_loop_by_mode"].values()])
    assert targets["master_over_thread_server"] > 0
    assert set(result["open_loop_by_mode"]) == {"thread", "process"}
    rows = {(p["name"], p["concurrency"]): p for p in result["phases"] if p["mode"] == "process"}
    for (name, conc), row in rows.items():
        assert row["calls"] > 0, (name, conc)
        _assert_every_request_accounted_for(row)
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row
        assert row["server_rss_kb"] > 0
        assert row["ratio"] > 0
    assert rows[("raw", 2)]["ratio"] == 1.0
    assert rows[("null", 2)]["load_processes"] == 2
    ol = result["open_loop"]
    assert ol["of_concurrency"] == 2 and ol["calls"] > 0
    _assert_every_request_accounted_for(ol)
    assert "calls/s" in done.stderr  # the table goes to stderr when JSON goes to stdout
    cost = result["cost"]
    assert cost["calls"] == 200 and cost["executor_pool_size"] >= 1
    steps = ("parse_us", "rpcserver_us", "executor_hop_us", "metrics_us", "total_us", "total_calls_per_s")
    for step in steps:
        assert cost[step] > 0, (step, cost)
    assert "executor hop" in done.stderr


def _interruptible() -> None:
    """preexec_fn: Ctrl-C as a terminal delivers it. A suite started in the background of a non-interactive
    shell (CI scripts, ``make test &``) inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt: the bench would run to its end instead of stopping (the "timed out" failure)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_child():
    proc = subprocess.Popen([sys.executable, "-m", "sbusr.bench", "--duration", "30", "--concurrency", "2",
                             "--phases", "null"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_interruptible)
    try:
        def all_started() -> list[int]:
            """Every child once both load generators run (they start last): bus, server, echo, 2 loads."""
            kids = descendants(proc.pid)
            loads = [k for k in kids if "sbusr.bench.loadgen" in _cmdline(k)]
            return kids if len(loads) >= 2 and len(kids) >= 5 else []

        kids = wait_for(all_started, "the bench's children", timeout=120)  # generous: slow start-ups
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130  # the children are stopped at once, not one after another
        deadline = time.monotonic() + 90  # generous: on a busy machine an interpreter exits slowly
        while time.monotonic() < deadline and any(alive(k) for k in kids):
            time.sleep(0.1)
        assert not [k for k in kids if alive(k)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_options_are_refused_without_starting_anything():
    done = subprocess.run([sys.executable, "-m", "sbusr.bench", "--concurrency", "0"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "concurrency" in done.stderr


@pytest.mark.parametrize("step", [1, 7, 20, 1000])
def test_feed_frames_matches_feed(step):
    packets = [c.encode_data(A(1, i, 2), A(19, 1, -1), i, 211, bytes([65 + i]) * i) for i in range(6)]
    packets.append(c.encode_notify(A(19, 1, 19), A(1, 0, 2), c.Notify("", "42", b'{"result":1}')))
    stream = b"".join(packets)
    slow, fast = c.FrameDecoder(), c.FrameDecoder()
    got_slow, got_fast = [], []
    for i in range(0, len(stream), step):
        chunk = stream[i:i + step]
        got_slow += slow.feed(bytearray(chunk))
        got_fast += fast.feed_frames(chunk)
    assert [raw for _, raw in got_slow] == [raw for raw, _ in got_fast] == packets
    for (pkt, raw), (raw2, fields) in zip(got_slow, got_fast, strict=True):
        assert type(raw) is bytes and type(raw2) is bytes
        assert c.packet_from_frame(raw2, fields) == pkt == c.decode_packet(raw)
    assert slow.buffered == fast.buffered == 0


def test_feed_frames_rejects_a_bad_header_at_once():
    with pytest.raises(c.CodecError, match="head flag"):
        c.FrameDecoder().feed_frames(b"\0" * 20)


def test_rss_of_this_process():
    assert rss_kb(os.getpid()) > 0
    assert rss_kb(2**22 + 12345) is None


def test_a_wrapped_server_is_stopped_with_everything_the_wrapper_started(tmp_path):
    # a wrapper that, unlike a well-behaved profiler, passes no signal on and leaves its child behind
    wrapper = ["sh", "-c", 'trap "exit 0" INT TERM; "$@" & wait', "sh"]
    bus, port = procs.start_bus()
    inner: list[int] = []
    try:
        config = procs.write_server_config(tmp_path / "server.conf", port, "thread", None, "native")
        server = procs.start_server(config, wrapper)
        inner = [pid for pid in descendants(server.pid) if alive(pid)]
        assert inner, "the wrapper should be running the server"
        server.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in inner):
            time.sleep(0.1)
        assert not [pid for pid in inner if alive(pid)]
    finally:
        for pid in inner:  # a failed run must not leave a server behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        bus.stop()
