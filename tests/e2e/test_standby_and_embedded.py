"""What a server says about the bus it is on: a hot standby says once that it stands by (then a
summary a minute), and ``embedded_bus = true`` on a port another bus holds is a WARNING with the address."""

from __future__ import annotations

import logging
import signal

import pytest

from sbusr.testing.processes import SERVER_CLIENT, SERVER_UNIT, BusProcess
from sbusr.testing.waiting import wait_for
from sbusr.transport.standby import LOG as STANDBY_LOG
from sbusr.transport.standby import Standby
from tests.helpers.server import ServerProcess, write_config
from tests.helpers.vendorproc import vendor_unavailable

MODES = ["thread", "process"]


@pytest.fixture
def bus():
    with BusProcess() as bus:
        yield bus


def _refusals(bus: BusProcess) -> int:
    return bus.output().count(f"refused registration of unit {SERVER_UNIT} client {SERVER_CLIENT} ")


@pytest.mark.parametrize("mode, backend", [
    ("thread", "native"), ("process", "native"),
    pytest.param("thread", "vendor", marks=pytest.mark.skipif(bool(vendor_unavailable()),
                                                              reason=vendor_unavailable() or "")),
])
def test_a_hot_standby_says_once_that_it_stands_by(bus, tmp_path, mode, backend):
    first = ServerProcess(write_config(tmp_path / "a.conf", bus.port, {"execution": {"workers": 1}})).start()
    second = ServerProcess(write_config(tmp_path / "b.conf", bus.port,
                                        {"execution": {"mode": mode, "workers": 1},
                                         "smartbus": {"backend": backend}}), standby=True)
    try:
        second.start()
        seen = _refusals(bus)
        wait_for(lambda: _refusals(bus) >= seen + 3, "three more refused registrations of the standby",
                 timeout=120)
        log = second.output()
        notices = [line for line in log.splitlines() if "standing by" in line]
        assert len(notices) == 1, notices
        assert " WARNING " in notices[0] and f"127.0.0.1:{bus.port}" in notices[0]
        assert "already connected" not in log and "failed with code" not in log  # per retry: DEBUG
        first.signal(signal.SIGTERM)
        wait_for(lambda: "taking over after" in second.output(), "the standby to take over", timeout=120)
    finally:
        first.stop()
        second.stop()


def test_standing_by_is_summed_up_once_a_minute(caplog):
    caplog.set_level(logging.INFO, logger=STANDBY_LOG.name)
    now = [100.0]
    standby = Standby("127.0.0.1:8089", "19/1(type 19)", clock=lambda: now[0])
    for _ in range(59):
        standby.refused()
        now[0] += 1.0
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "standing by and retrying" in caplog.records[0].getMessage()
    standby.refused()  # 59 s after the first: a minute has not passed
    now[0] += 1.0
    standby.refused()  # 60 s
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert caplog.records[1].getMessage() == ("SmartBus 127.0.0.1:8089: still standing by as 19/1(type 19) "
                                              "for 60 s (60 registrations refused in the last 60 s)")
    standby.registered()
    assert "taking over after 60 s" in caplog.records[2].getMessage()
    standby.refused()
    assert "standing by and retrying" in caplog.records[3].getMessage()


@pytest.mark.parametrize("mode", MODES)
def test_embedded_bus_on_a_taken_port_is_a_warning_with_the_address(bus, tmp_path, mode):
    conf = write_config(tmp_path / "s.conf", bus.port, {"smartbus": {"embedded_bus": True},
                                                        "execution": {"mode": mode, "workers": 1}})
    with ServerProcess(conf) as server:
        lines = [line for line in server.output().splitlines() if "embedded_bus" in line]
        assert len(lines) == 1, lines
        assert " WARNING " in lines[0]
        assert f"127.0.0.1:{bus.port} is taken" in lines[0]
        assert "did not start" in lines[0]
