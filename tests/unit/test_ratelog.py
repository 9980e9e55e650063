"""The rate-limited logger: one line per key and interval, then the count of what was held back."""

from __future__ import annotations

import logging

from sbusr.util import ratelog
from sbusr.util.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_then_the_suppressed_count(caplog):
    caplog.set_level(logging.WARNING, logger="test.ratelog")
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("test.ratelog"), logging.WARNING, 10.0, clock=clock)
    for _ in range(500):
        log.log(("peer-a", "notify"), "bad NOTIFY from %s", "peer-a")
        log.log(("peer-b", "notify"), "bad NOTIFY from %s", "peer-b")
    log.log(("peer-a", "flow ack"), "bad flow ack from %s", "peer-a")
    assert [r.getMessage() for r in caplog.records] == [
        "bad NOTIFY from peer-a", "bad NOTIFY from peer-b", "bad flow ack from peer-a"]
    clock.now += 10.0
    caplog.clear()
    assert log.log(("peer-a", "notify"), "bad NOTIFY from %s", "peer-a")
    assert [r.getMessage() for r in caplog.records] == [
        "bad NOTIFY from peer-a (499 similar lines suppressed in the last 10 s)"]
    assert not log.log(("peer-a", "notify"), "bad NOTIFY from %s", "peer-a")


def test_keys_are_bounded(monkeypatch):
    monkeypatch.setattr(ratelog, "MAX_KEYS", 8)
    log = RateLimitedLog(logging.getLogger("test.ratelog.bounded"), logging.WARNING, 10.0)
    for i in range(1000):  # a spoofing peer inventing new keys cannot grow memory
        log.log(("peer", i), "x")
    assert len(log._state) == 8


def test_disabled_level_costs_nothing(caplog):
    caplog.set_level(logging.ERROR, logger="test.ratelog.quiet")
    log = RateLimitedLog(logging.getLogger("test.ratelog.quiet"), logging.INFO, 10.0)
    assert not log.log("k", "hidden")
    assert not log._state
