"""sbusr.util.procs against real child processes: what the test kit and the benchmark rely on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from sbusr.testing.waiting import wait_for
from sbusr.util import procs

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_terminate_stops_a_child_and_gives_its_exit_status():
    child = subprocess.Popen(SLEEPER)
    assert procs.alive(child.pid)
    assert procs.terminate(child, 30.0) == -signal.SIGTERM
    assert not procs.alive(child.pid)


def test_terminate_kills_a_child_that_ignores_sigterm():
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
    assert procs.terminate(child, 1.0) == -signal.SIGKILL


def test_a_zombie_is_not_alive_and_descendants_include_grandchildren():
    code = ("import subprocess, sys, time; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); "
            "time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code, *SLEEPER], stdout=subprocess.PIPE,
                              start_new_session=True)
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        assert wait_for(lambda: grandchild in procs.descendants(parent.pid), "the grandchild to be seen")
        assert procs.children(parent.pid) == [grandchild]
        os.kill(grandchild, signal.SIGKILL)  # its parent never reaps it: a zombie
        assert wait_for(lambda: not procs.alive(grandchild), "the grandchild to be a zombie")
        assert procs.children(parent.pid) == []
    finally:
        procs.stop_group(parent, 30.0)
    assert not procs.alive(parent.pid)


def test_facts_of_a_process_and_of_one_that_is_gone():
    assert procs.rss_kb(os.getpid()) > 0
    assert (procs.cpu_seconds(os.getpid()) or 0.0) > 0.0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procs.rss_kb(child.pid) is None
    assert procs.cpu_seconds(child.pid) is None
    assert procs.descendants(child.pid) == []
