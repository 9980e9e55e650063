"""@timer(..., target="workers") and @cron(..., target="workers"): each tick runs in every worker
process (a per-process cache stays fresh everywhere); in thread mode, the one server process."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sbusr.testing import Stack
from sbusr.testing.waiting import wait_for
from sbusr.timers import schedule

CACHE = textwrap.dedent('''
    import os

    import oslo_messaging

    from sbusr.decorators import cron, timer

    OUT = {out!r}
    PRICES = {{}}


    @timer(0.5, target="workers")
    def refresh():
        PRICES["tea"] = PRICES.get("tea", 0) + 1
        with open(os.path.join(OUT, "refresh"), "a") as f:
            f.write(f"{{os.getpid()}}\\n")


    @timer(0.5)
    def once():
        with open(os.path.join(OUT, "once"), "a") as f:
            f.write(f"{{os.getpid()}}\\n")


    @cron(-1, target="workers")
    def nightly():
        pass


    class Cache:
        target = oslo_messaging.Target(namespace="cache")

        def price(self, ctxt):
            return {{"pid": os.getpid(), "refreshed": PRICES.get("tea", 0)}}
''')

WORKERS = 3


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module", params=["thread", "process"])
def cached(request, tmp_path_factory, on_session_bus):
    out = tmp_path_factory.mktemp("out")
    folder = tmp_path_factory.mktemp("endpoints")
    (folder / "cache.py").write_text(CACHE.format(out=str(out)))
    config = {"execution": {"mode": request.param, "workers": WORKERS}}
    with Stack([folder], config, workdir=tmp_path_factory.mktemp("stack"), **on_session_bus) as stack:
        yield request.param, stack, out


def test_a_workers_timer_runs_in_every_worker_at_each_tick(cached):
    mode, stack, out = cached
    server_pid = stack.server.proc.pid
    if mode == "process":
        pids = wait_for(lambda: len(p := set(lines(out / "refresh"))) >= WORKERS and p,
                        "a refresh in each worker")
        assert len(pids) == WORKERS and str(server_pid) not in pids
        once = wait_for(lambda: lines(out / "once"), "the once-per-server timer")
        assert str(server_pid) not in once
    else:
        wait_for(lambda: len(lines(out / "refresh")) >= 2, "two refreshes")
        assert set(lines(out / "refresh")) == {str(server_pid)}
    timers = wait_for(lambda: (t := {x["name"]: x for x in stack.ipsc.call("sys.timers")["result"]})
                      and t["cache.refresh"]["last"] and t, "a finished tick")
    refresh = timers["cache.refresh"]
    assert refresh["target"] == "workers" and timers["cache.once"]["target"] == "server"
    assert refresh["last"]["outcome"] == "ok", refresh
    assert refresh["last"]["workers"] == (WORKERS if mode == "process" else 1)
    assert refresh["last"]["workers_failed"] == 0
    assert timers["cache.nightly"]["target"] == "workers"


def test_every_worker_serves_a_refreshed_cache(cached):
    _mode, stack, out = cached
    wait_for(lambda: len(set(lines(out / "refresh"))) >= (WORKERS if _mode == "process" else 1), "refreshes")
    for _ in range(2 * WORKERS):
        reply = stack.ipsc.call("cache.price")
        assert reply["result"]["refreshed"] >= 1, reply


def test_the_target_is_checked():
    with pytest.raises(ValueError):
        schedule.timer(1, target="everyone")
    with pytest.raises(ValueError):
        schedule.cron(-1, target="worker")
    entries = schedule.find_timers([("module", __name__, _module_with_timers())])
    assert {(e.name, e.target) for e in entries} == {(f"{__name__}.tick", "workers")}


def _module_with_timers():
    import types

    module = types.ModuleType(__name__)

    def tick():
        pass

    tick.__module__ = __name__
    tick.__qualname__ = "tick"
    module.tick = schedule.timer(5, target="workers")(tick)
    return module
