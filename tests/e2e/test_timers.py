"""@timer and @cron through a real bus: one run per tick for the whole server, in both execution modes.

Nothing here asserts a duration: the counts come from the server's own report (``sys.timers``)
and from its shutdown summary, compared with what the timer functions wrote.
"""

from __future__ import annotations

import re
import signal
import textwrap
import time
from pathlib import Path

import pytest

from sbusr.testing import Stack
from sbusr.testing.waiting import wait_for
from sbusr.timers import schedule

TIMERS = textwrap.dedent('''
    import os
    import time

    from sbusr.decorators import cron, timer

    OUT = {out!r}


    def _write(name, text):
        with open(os.path.join(OUT, name), "a") as f:
            f.write(text + "\\n")


    @timer(1)
    def beat():
        _write("beat", str(os.getpid()))


    @timer(1)
    def slow():
        _write("slow", "start")
        time.sleep(2.5)


    @timer(1)
    def broken():
        raise KeyError("nope")


    @timer(1)
    def stuck():  # past its time limit until the test releases it (a thread cannot be stopped)
        _write("stuck", "start")
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(OUT, "release")) and time.monotonic() < deadline:
            time.sleep(0.05)


    @cron(-1)
    def every_minute():
        _write("minute", "ran")
''')


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []



def timers_by_name(stack: Stack) -> dict[str, dict]:
    reply = stack.ipsc.call("sys.timers")
    return {t["name"]: t for t in reply["result"]}


@pytest.fixture(scope="module", params=["thread", "process"])
def running(request, tmp_path_factory, on_session_bus):
    out = tmp_path_factory.mktemp("out")
    folder = tmp_path_factory.mktemp("endpoints")
    (folder / "ticks.py").write_text(TIMERS.format(out=str(out)))
    config = {"execution": {"mode": request.param, "workers": 2, "call_timeout": 4},
              "server": {"graceful_timeout": 30}}
    with Stack([folder], config, workdir=tmp_path_factory.mktemp("stack"), **on_session_bus) as stack:
        yield request.param, stack, out, folder


def test_each_tick_runs_once_in_a_worker_and_overruns_skip(running):
    mode, stack, out, _folder = running
    wait_for(lambda: len(lines(out / "beat")) >= 4, "four beats")
    state = wait_for(lambda: (t := timers_by_name(stack))["ticks.slow"]["skipped"] >= 1
                     and t["ticks.broken"]["failed"] >= 1 and t["ticks.stuck"]["failed"] >= 1 and t,
                     "a skipped, a failed and a timed-out tick")
    assert state["ticks.beat"]["schedule"] == "every 1 s"
    assert state["ticks.beat"]["next_run"]
    assert state["ticks.broken"]["last"]["error"] == "KeyError: 'nope'"
    assert "-32001" in state["ticks.stuck"]["last"]["error"]
    assert state["ticks.every_minute"]["schedule"] == "cron * * * * *"
    pids = {int(p) for p in lines(out / "beat")}
    server_pid = stack.server.proc.pid
    if mode == "thread":
        assert pids == {server_pid}
    else:
        assert server_pid not in pids  # a worker ran it
    log = stack.server.output()
    assert "tick skipped" in log
    assert "KeyError: 'nope'" in log and "Traceback" in log


def test_reload_picks_up_and_drops_timers(running):
    _mode, stack, out, folder = running
    (folder / "later.py").write_text(textwrap.dedent(f'''
        from sbusr.decorators import timer

        @timer(1)
        def fresh():
            with open({str(out / "fresh")!r}, "a") as f:
                f.write("ran\\n")
    '''))
    source = (folder / "ticks.py").read_text()
    (folder / "ticks.py").write_text(source.replace("@timer(1)\ndef broken", "def broken"))
    assert "result" in stack.ipsc.call("sys.reload", timeout=120)
    names = set(timers_by_name(stack))
    assert "later.fresh" in names
    assert "ticks.broken" not in names
    wait_for(lambda: lines(out / "fresh"), "the new timer to run")


def test_shutdown_summary_matches_the_runs(running):
    _mode, stack, out, _folder = running
    server = stack.server
    (out / "release").touch()  # a stuck tick that still runs in thread mode may end now
    server.signal(signal.SIGTERM)
    assert server.proc.wait(120) == 0
    log = server.output()
    summary = re.search(r"timer ticks\.beat stopped: (\d+) runs \((\d+) ok, (\d+) failed\), (\d+) skipped",
                        log)
    assert summary, log[-3000:]
    runs, ok, failed, _skipped = map(int, summary.groups())
    assert ok == len(lines(out / "beat")) and failed == 0 and runs == ok  # exactly once per tick
    slow = re.search(r"timer ticks\.slow stopped: (\d+) runs \((\d+) ok", log)
    assert slow and int(slow.group(1)) == len(lines(out / "slow"))
    (out / "release").unlink()
    stack.start_server()  # for the fixture's teardown and any later test


# ---------------------------------------------------------------------------- the decorators alone


def nightly():
    pass


def fifth():
    pass


def weekdays():
    pass


def needs(arg):
    pass


def test_uwsgi_fields_and_crontab_strings():
    schedule.cron(40, 2)(nightly)
    schedule.cron(-5)(fifth)
    schedule.cron("*/10 * * * 1-5")(weekdays)
    assert getattr(nightly, schedule.TIMER_ATTR).expression == "40 2 * * *"
    assert getattr(fifth, schedule.TIMER_ATTR).expression == "*/5 * * * *"
    assert getattr(weekdays, schedule.TIMER_ATTR).describe() == "cron */10 * * * 1-5"
    start = time.mktime((2026, 12, 1, 3, 0, 0, 0, 0, -1))
    nxt = getattr(nightly, schedule.TIMER_ATTR).next_after(start)
    assert time.localtime(nxt)[:5] == (2026, 12, 2, 2, 40)
    with pytest.raises(TypeError):
        schedule.timer(1)(nightly)  # one schedule per function


@pytest.mark.parametrize("make", [
    lambda: schedule.timer(0), lambda: schedule.timer(-1), lambda: schedule.timer("5"),
    lambda: schedule.cron(61), lambda: schedule.cron("* * *"), lambda: schedule.cron("* * * * *", 3),
])
def test_bad_schedules_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_timers_go_on_module_level_functions_without_arguments():
    with pytest.raises(TypeError):
        schedule.timer(1)(needs)

    class Holder:
        def method(self):
            pass

    with pytest.raises(TypeError):
        schedule.timer(1)(Holder.method)


def test_readme_timer_example_loads_with_its_schedules(tmp_path):
    from sbusr.testing import Methods

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    match = re.search(r"```python\n(# methods/housekeeping.py\n.*?)```", text, re.S)
    assert match, "README lost its timer example"
    (tmp_path / "housekeeping.py").write_text(match.group(1))
    found = schedule.find_timers(Methods(tmp_path).registry.modules)
    assert {t.name: t.schedule.describe() for t in found} == {
        "housekeeping.refresh_blacklist": "every 30 s",
        "housekeeping.purge_old_sessions": "cron 40 2 * * *",
        "housekeeping.five_minutes": "cron */5 * * * *",
        "housekeeping.office_hours": "cron 0 8-18 * * 1-5",
        "housekeeping.reload_price_cache": "every 60 s",
    }
    assert {t.name for t in found if t.target == "workers"} == {"housekeeping.reload_price_cache"}
