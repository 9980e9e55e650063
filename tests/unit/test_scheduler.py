"""The scheduler alone, with a stand-in for the server's request path (counts, never durations)."""

from __future__ import annotations

import threading
import time

from sbusr.jsonrpc.errors import CallTimeout
from sbusr.timers.schedule import Every, TimerEntry
from sbusr.timers.scheduler import RUN_METHOD, Scheduler

WAIT = 60.0


def entry(name: str, seconds: float = 0.05) -> TimerEntry:
    return TimerEntry(name, "mod", name, "file", "/x/mod.py", Every(seconds))


def wait_for(predicate, what: str):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def by_name(scheduler: Scheduler) -> dict[str, dict]:
    return {t["name"]: t for t in scheduler.describe()}


def test_a_run_still_going_skips_ticks_and_errors_are_counted():
    release = threading.Event()
    calls: list[tuple[str, dict]] = []

    def call(method, params, timeout):
        calls.append((method, params))
        if params["qualname"] == "blocked":
            release.wait(WAIT)
            return {"outcome": "ok"}
        raise CallTimeout("mod.bad did not finish within 4 s")

    scheduler = Scheduler(call, call_timeout=4)
    scheduler.update([entry("blocked"), entry("bad")])
    scheduler.start()
    try:
        wait_for(lambda: by_name(scheduler)["blocked"]["skipped"] >= 2
                 and by_name(scheduler)["bad"]["failed"] >= 2, "skips and failures")
        blocked = by_name(scheduler)["blocked"]
        assert blocked["runs"] == 1 and blocked["running"] is True
        assert by_name(scheduler)["bad"]["last"]["error"].startswith("-32001")
        release.set()
        wait_for(lambda: by_name(scheduler)["blocked"]["ok"] >= 1, "the blocked run to finish")
    finally:
        release.set()
        scheduler.stop(timeout=10)
    assert {method for method, _ in calls} == {RUN_METHOD}
    assert calls[0][1] == {"module": "mod", "qualname": calls[0][1]["qualname"], "kind": "file",
                           "source": "/x/mod.py"}


def test_update_keeps_unchanged_timers_and_drops_removed_ones():
    runs = []
    scheduler = Scheduler(lambda m, p, t: runs.append(p["qualname"]) or {"outcome": "ok"}, call_timeout=0)
    scheduler.update([entry("a"), entry("b")])
    scheduler.start()
    try:
        wait_for(lambda: by_name(scheduler)["a"]["ok"] >= 2, "two runs of a")
        scheduler.update([entry("a"), entry("c")])
        assert set(by_name(scheduler)) == {"a", "c"}
        assert by_name(scheduler)["a"]["runs"] >= 2  # counts kept
        count_b = runs.count("b")
        wait_for(lambda: by_name(scheduler)["c"]["ok"] >= 2, "two runs of c")
        assert runs.count("b") == count_b
    finally:
        scheduler.stop(timeout=10)


def test_no_ticks_while_off_the_bus():
    on_bus = threading.Event()
    runs = []
    scheduler = Scheduler(lambda m, p, t: runs.append(1) or {"outcome": "ok"}, 0, on_bus.is_set)
    scheduler.update([entry("a")])
    scheduler.start()
    try:
        wait_for(lambda: by_name(scheduler)["a"]["not_on_bus"] >= 3, "ticks off the bus")
        assert runs == []
        on_bus.set()
        wait_for(lambda: runs, "a run once on the bus")
    finally:
        scheduler.stop(timeout=10)
