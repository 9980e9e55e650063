"""The ready notification (SBUSR_READY_FD): what a supervisor reads, and when."""

from __future__ import annotations

import json
import os

import pytest

from sbusr.util import ready


@pytest.fixture
def pipe(monkeypatch):
    read, write = os.pipe()
    os.set_blocking(read, False)
    monkeypatch.setenv(ready.ENV, str(write))
    yield read
    for fd in (read, write):
        try:
            os.close(fd)
        except OSError:
            pass


def events(read: int) -> list[dict]:
    try:
        data = os.read(read, 65536)
    except BlockingIOError:
        return []
    return [json.loads(line) for line in data.splitlines()]


def test_ready_once_every_condition_holds_and_only_once(pipe):
    notifier = ready._Notifier()
    notifier.setup("sbusr-server", {"serving", "registered"})
    assert ready.ENV not in os.environ  # worker and spooler processes never see it
    notifier.mark("registered", {})
    assert events(pipe) == []
    notifier.mark("serving", {"address": "19:1"})
    notifier.mark("registered", {})  # a registration after a reconnect says nothing more
    [event] = events(pipe)
    assert event == {"event": "ready", "program": "sbusr-server", "pid": os.getpid(), "address": "19:1"}
    assert events(pipe) == []


def test_standby_waits_for_serving_then_ready_follows_on_takeover(pipe):
    notifier = ready._Notifier()
    notifier.setup("sbusr-server", {"serving", "registered"})
    notifier.event("standby", {"serving"}, {})  # the bus refused the identity before the start ended
    assert events(pipe) == []
    notifier.mark("serving", {"address": "19:1"})
    assert [e["event"] for e in events(pipe)] == ["standby"]
    notifier.mark("registered", {})
    assert [e["event"] for e in events(pipe)] == ["ready"]


def test_the_descriptor_is_not_passed_on_to_children(pipe):
    notifier = ready._Notifier()
    write = int(os.environ[ready.ENV])
    os.set_inheritable(write, True)
    notifier.setup("sbusr-bus", {"listening"})
    assert not os.get_inheritable(write)


def test_without_the_variable_nothing_is_written(monkeypatch):
    monkeypatch.delenv(ready.ENV, raising=False)
    notifier = ready._Notifier()
    notifier.setup("sbusr-api", {"listening"})
    notifier.mark("listening", {})  # no descriptor: nothing to write to, nothing raised


def test_a_reader_gone_does_not_stop_the_program(pipe):
    notifier = ready._Notifier()
    notifier.setup("sbusr-api", {"listening"})
    os.close(pipe)
    notifier.mark("listening", {})  # EPIPE is logged at DEBUG, the program runs on


def test_a_bad_value_is_a_warning_not_a_crash(monkeypatch, caplog):
    monkeypatch.setenv(ready.ENV, "stdout")
    notifier = ready._Notifier()
    notifier.setup("sbusr-bus", {"listening"})
    notifier.mark("listening", {})
    assert any(ready.ENV in r.getMessage() for r in caplog.records)
