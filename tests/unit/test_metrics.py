"""sbusr.metrics on its own: the rolling window's figures, the recording API and the exposition text."""

from __future__ import annotations

import json
import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sbusr import metrics
from sbusr.metrics import window
from sbusr.metrics.window import RollingWindow


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, parsed back with prometheus_client's own parser."""
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_percentiles_come_within_the_bin_width():
    clock = Clock()
    w = RollingWindow(clock=clock, wall_clock=lambda: 0.0)
    for ms in range(1, 101):  # 1 .. 100 ms, one call each
        w.record("echo", None, ms / 1000.0, clock.now)
    row = w.snapshot()["methods"][0]
    assert row["calls"] == 100 and row["errors"] == 0
    assert row["p50_ms"] == pytest.approx(50.0, rel=window.FINE_RATIO - 1)
    assert row["p99_ms"] == pytest.approx(99.0, rel=window.FINE_RATIO - 1)


def test_the_last_minute_moves_on_and_the_totals_stay():
    clock = Clock()
    w = RollingWindow(clock=clock, wall_clock=lambda: 0.0)
    for _ in range(30):
        w.record("echo", None, 0.001, clock.now)
    w.record("echo", -32000, 0.002, clock.now, "0:1", "boom")
    clock.now += 30.0
    snap = w.snapshot()
    echo = snap["methods"][0]
    assert echo["minute"] == {"calls": 31, "errors": {"-32000": 1}}
    assert echo["rate"] == pytest.approx(31 / 30.0, rel=0.01)  # younger than a minute: per second lived
    clock.now += 61.0
    snap = w.snapshot()
    echo = snap["methods"][0]
    assert echo["minute"] == {"calls": 0, "errors": {}} and echo["rate"] == 0 and echo["p99_ms"] is None
    assert (echo["calls"], echo["errors"], snap["calls"], snap["errors"]) == (31, 1, 31, 1)


def test_history_has_ten_second_points_for_ten_minutes():
    clock = Clock(2000.0)
    w = RollingWindow(clock=clock, wall_clock=lambda: clock.now + 5000.0)
    clock.now += 700.0  # lived longer than the history
    for _ in range(25):  # 4 calls a second for 25 s
        for _call in range(4):
            w.record("echo", None, 0.003, clock.now)
        clock.now += 1.0
    history = w.snapshot()["history"]
    assert len(history["rate"]) == len(history["p99_ms"]) == len(history["errors"]) == window.HISTORY_POINTS
    busy = [k for k, rate in enumerate(history["rate"]) if rate]
    calls = sum(history["rate"][k] * window.HISTORY_STEP for k in busy[:-1]) + history["rate"][busy[-1]] * 5
    assert calls == pytest.approx(100)
    assert all(history["p99_ms"][k] == pytest.approx(3.0, rel=0.1) for k in busy)
    assert all(history["p99_ms"][k] is None for k in range(window.HISTORY_POINTS) if k not in busy)
    last_start = history["start"] + (window.HISTORY_POINTS - 1) * window.HISTORY_STEP
    assert last_start == pytest.approx(clock.now + 5000.0 - 5.0)  # wall time of the current step


def test_history_starts_with_the_process():
    clock = Clock(2003.0)
    w = RollingWindow(clock=clock, wall_clock=lambda: clock.now)
    clock.now += 25.0
    history = w.snapshot()["history"]
    assert len(history["rate"]) == 3 and history["start"] == 2000.0  # the steps at 2000, 2010, 2020


def test_a_snapshot_is_cut_to_fit_one_notify():
    clock = Clock()
    w = RollingWindow(clock=clock, wall_clock=lambda: 0.0)
    for n in range(200):
        w.record(f"namespace.method_{n:03d}", -32000, 0.001 * (n + 1), clock.now, "0:1", "x" * 1000)
    for _ in range(3):
        w.record("namespace.method_000", None, 0.001, clock.now)
    snap = w.snapshot()
    assert len(json.dumps(snap)) > 15000
    fitted = window.fit(snap, 12000)
    assert len(json.dumps(fitted)) <= 12000 and fitted["truncated"] is True
    assert fitted["methods"][0]["method"] == "namespace.method_000"  # the busiest stays
    small = window.fit(w.snapshot(), 100_000)
    assert len(small["recent_errors"]) == window.RECENT_ERRORS and "truncated" not in small


def test_recent_errors_keep_the_last_twenty_newest_first():
    clock = Clock()
    w = RollingWindow(clock=clock, wall_clock=lambda: 100.0)
    for n in range(25):
        w.record("m", -32000 - (n % 3), 0.001, clock.now, f"0:{n}", f"failure {n} " + "x" * 1000)
    errors = w.snapshot()["recent_errors"]
    assert len(errors) == window.RECENT_ERRORS
    assert [e["caller"] for e in errors] == [f"0:{n}" for n in range(24, 4, -1)]
    assert errors[0]["message"].startswith("failure 24") and len(errors[0]["message"]) == window.MESSAGE_MAX
    assert errors[0]["code"] == -32000 and errors[0]["method"] == "m"


def test_unknown_method_names_do_not_become_labels():
    registry = CollectorRegistry()
    rec = metrics.RequestMetrics(registry)
    rec.set_methods(["echo", "weather.sk"])
    for name, code in [("echo", None), ("weather.sk", None), ("weather.sk", -32602), ("no.such", -32601),
                       ("rm -rf /", -32601), ("<unknown>", -32600)]:
        rec.request_done(name, code, rec.request_received())
    got = samples(registry)
    requests = {labels: value for (name, labels), value in got.items() if name == "sbusr_requests_total"}
    assert requests == {
        (("method", "<unknown>"), ("outcome", "-32600")): 1.0,
        (("method", "<unknown>"), ("outcome", "-32601")): 2.0,
        (("method", "echo"), ("outcome", "result")): 1.0,
        (("method", "weather.sk"), ("outcome", "-32602")): 1.0,
        (("method", "weather.sk"), ("outcome", "result")): 1.0,
    }
    assert got[("sbusr_requests_in_flight", ())] == 0


def test_histogram_buckets_are_cumulative_and_exact_at_the_bounds():
    registry = CollectorRegistry()
    rec = metrics.RequestMetrics(registry)
    rec.set_methods(["echo"])
    durations = [0.00005, 0.0001, 0.0001001, 0.001, 0.02, 0.7, 31.0]  # 0.1 ms counts as le="0.0001"
    for seconds in durations:
        rec.window.record("echo", None, seconds, 5.0)
    got = samples(registry)
    bucket = {dict(labels)["le"]: value for (name, labels), value in got.items()
              if name == "sbusr_request_duration_seconds_bucket"}
    assert bucket["0.0001"] == 2 and bucket["0.00025"] == 3 and bucket["0.001"] == 4 and bucket["0.025"] == 5
    assert bucket["1.0"] == 6 and bucket["30.0"] == 6 and bucket["+Inf"] == 7
    values = [bucket[le] for le in [*map(window._le, window.PROMETHEUS_BUCKETS), "+Inf"]]
    assert values == sorted(values)
    assert got[("sbusr_request_duration_seconds_count", (("method", "echo"),))] == 7
    assert got[("sbusr_request_duration_seconds_sum", (("method", "echo"),))] == pytest.approx(sum(durations))


def test_in_flight_counts_calls_between_received_and_done():
    registry = CollectorRegistry()
    rec = metrics.RequestMetrics(registry)
    started = rec.request_received(3)  # a batch of three calls
    assert rec.window.in_flight == 3
    rec.request_done("a", None, started)
    assert samples(registry)[("sbusr_requests_in_flight", ())] == 2
    rec.request_done("a", None, started)
    rec.request_done("a", -32000, started, "0:1", "x")
    assert rec.window.in_flight == 0


def test_worker_states_and_restarts_from_the_execution_stats():
    registry = CollectorRegistry()
    rec = metrics.RequestMetrics(registry)
    stats = {"threads": 4}
    rec.sample_executor(lambda: stats)
    rec.request_received(6)
    got = samples(registry)
    workers = {dict(labels)["state"]: v for (name, labels), v in got.items() if name == "sbusr_workers"}
    assert workers == {"idle": 0, "busy": 4, "starting": 0} and got[("sbusr_requests_queued", ())] == 2

    stats = {"idle": 1, "busy": 1, "workers": 3, "replaced": {"crash": 2, "max_tasks_per_child": 1}}
    for _ in range(2):  # read twice: restarts are counted once
        got = samples(registry)
    restarts = {dict(labels)["reason"]: v for (name, labels), v in got.items()
                if name == "sbusr_worker_restarts_total"}
    assert restarts == {"crash": 2, "timeout": 0, "recycle": 1, "reload": 0}
    workers = {dict(labels)["state"]: v for (name, labels), v in got.items() if name == "sbusr_workers"}
    assert workers == {"idle": 1, "busy": 1, "starting": 1}
    snap = rec.snapshot()
    assert snap["workers"] == {"idle": 1, "busy": 1, "starting": 1} and snap["queued"] == 0

    def broken() -> dict[str, int]:
        raise RuntimeError("executor gone")

    rec.sample_executor(broken)  # a failing stats read never breaks a scrape
    assert ("sbusr_requests_in_flight", ()) in samples(registry)
    rec.reload_done()
    assert rec.snapshot()["reloads"] == 1 and samples(registry)[("sbusr_reloads_total", ())] == 1


def test_the_push_api_for_a_master_process():
    """The calls a master that relays to worker processes makes, without any sampler."""
    registry = CollectorRegistry()
    rec = metrics.RequestMetrics(registry)
    rec.set_workers(idle=3, busy=4, starting=1)
    rec.set_queued(7)
    rec.worker_restarted("timeout")
    rec.worker_restarted("reload", 8)
    got = samples(registry)
    assert got[("sbusr_workers", (("state", "starting"),))] == 1 and got[("sbusr_requests_queued", ())] == 7
    assert got[("sbusr_worker_restarts_total", (("reason", "timeout"),))] == 1
    assert got[("sbusr_worker_restarts_total", (("reason", "reload"),))] == 8


def test_bus_metrics_count_reconnects_not_the_first_registration():
    registry = CollectorRegistry()
    bus = metrics.BusMetrics(registry)
    bus.bus_connected(True)
    bus.set_ipsc_peers(2)
    assert samples(registry)[("sbusr_bus_reconnects_total", ())] == 0
    bus.bus_connected(False)
    assert samples(registry)[("sbusr_bus_connected", ())] == 0
    bus.bus_connected(True)
    got = samples(registry)
    assert got[("sbusr_bus_connected", ())] == 1 and got[("sbusr_bus_reconnects_total", ())] == 1
    assert got[("sbusr_ipsc_peers", ())] == 2


def test_api_metrics():
    registry = CollectorRegistry()
    api = metrics.ApiMetrics(registry)
    api.flow_done("started", 0.004)
    api.flow_done("refused")
    api.flow_done("something new")  # never a new label
    api.http_request("/api/flow", 200)
    got = samples(registry)
    flows = {dict(labels)["outcome"]: v for (name, labels), v in got.items()
             if name == "sbusr_api_flows_total"}
    assert flows["started"] == 1 and flows["refused"] == 1 and flows["error"] == 1 and len(flows) == 8
    assert got[("sbusr_api_flow_ack_seconds_count", ())] == 1
    assert got[("sbusr_api_requests_total", (("route", "/api/flow"), ("status", "200")))] == 1


def test_recording_from_many_threads_loses_nothing():
    registry = CollectorRegistry()
    rec = metrics.RequestMetrics(registry)
    rec.set_methods(["echo"])
    per_thread, threads = 5000, 8

    def work() -> None:
        for n in range(per_thread):
            rec.request_done("echo", None if n % 10 else -32000, rec.request_received(), "0:1", "x")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(rec.window.pending) < window.FOLD_AT  # the callers sorted them in as they went
    snap = rec.snapshot()
    assert snap["calls"] == per_thread * threads and snap["errors"] == per_thread * threads // 10
    assert snap["in_flight"] == 0
    got = samples(registry)
    assert got[("sbusr_requests_total", (("method", "echo"), ("outcome", "result")))] == 36000


def test_the_shared_instances_are_one_per_process():
    assert metrics.requests() is metrics.requests()
    assert metrics.bus() is metrics.bus() and metrics.api() is metrics.api()
