"""The flow table both bus backends use: acks, results, error acks, timeouts and forgetting."""

from __future__ import annotations

import concurrent.futures

import pytest

from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address
from sbusr.smartbus.flows import FlowTable
from sbusr.smartbus.interface import BusError, FlowAckEvent, FlowInvocation, FlowTimeout

IPSC = Address(0, 1, codec.CLIENT_TYPE_IPSC)


class Timer:
    """A timer handle that only records being cancelled (the table never fires timers itself)."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def flow(table: FlowTable, invoke_id: int, want_result: bool) -> tuple[FlowInvocation, Timer, Timer]:
    inv = FlowInvocation(invoke_id)
    if want_result:
        inv.result = concurrent.futures.Future()
    ack_timer, result_timer = Timer(), Timer()
    table.add(inv, ack_timer, result_timer if want_result else None)
    return inv, ack_timer, result_timer


def ack(invoke_id: int, code: int = codec.FLOW_ACK_OK, message: str = "") -> FlowAckEvent:
    return FlowAckEvent(invoke_id, code, message, IPSC)


def test_ack_then_result_resolves_both_and_forgets_the_flow():
    table = FlowTable()
    inv, ack_timer, result_timer = flow(table, 7, want_result=True)
    table.acked(ack(7))
    assert inv.ack.result(0) == ack(7) and ack_timer.cancelled and len(table) == 1
    table.returned(7, '["ok"]')
    assert inv.result is not None and inv.result.result(0) == '["ok"]'
    assert result_timer.cancelled and len(table) == 0


def test_without_a_result_the_ack_ends_the_flow_and_a_result_is_ignored():
    table = FlowTable()
    inv, _, _ = flow(table, 1, want_result=False)
    table.acked(ack(1))
    assert len(table) == 0
    table.returned(1, "[]")  # the vendor library always asks for one: nobody waits, nothing breaks
    assert inv.result is None


def test_an_error_ack_fails_the_result_at_once():
    table = FlowTable()
    inv, _, result_timer = flow(table, 2, want_result=True)
    table.acked(ack(2, -3, "flow not found"))
    assert inv.ack.result(0).ack == -3
    assert inv.result is not None
    with pytest.raises(BusError) as err:
        inv.result.result(0)
    assert err.value.code == -3 and not isinstance(err.value, FlowTimeout)
    assert "flow not found" in str(err.value)
    assert result_timer.cancelled and len(table) == 0


def test_ack_timeout_fails_the_ack_and_a_late_ack_is_ignored():
    table = FlowTable()
    inv, _, _ = flow(table, 3, want_result=True)
    table.ack_timed_out(3)
    with pytest.raises(FlowTimeout) as err:
        inv.ack.result(0)
    assert err.value.code == codec.ERR_TIMEOUT
    table.acked(ack(3))  # late: the ack stays failed
    assert isinstance(inv.ack.exception(0), FlowTimeout)
    assert len(table) == 1  # the result keeps its own timeout
    table.result_timed_out(3)
    assert inv.result is not None and isinstance(inv.result.exception(0), FlowTimeout)
    assert len(table) == 0


def test_a_flow_cancelled_by_its_caller_is_forgotten_when_its_timers_fire():
    table = FlowTable()
    inv, _, _ = flow(table, 4, want_result=True)
    assert inv.ack.cancel() and inv.result is not None and inv.result.cancel()
    table.ack_timed_out(4)
    table.result_timed_out(4)
    assert len(table) == 0


def test_fail_all_fails_what_is_awaited_and_cancels_the_timers():
    table = FlowTable()
    waiting, ack_timer, result_timer = flow(table, 5, want_result=True)
    acked, _, _ = flow(table, 6, want_result=True)
    table.acked(ack(6))
    table.fail_all(BusError("stopped", codec.ERR_NOT_CONNECTED))
    assert isinstance(waiting.ack.exception(0), BusError) and ack_timer.cancelled and result_timer.cancelled
    assert acked.ack.result(0).ack == codec.FLOW_ACK_OK
    assert acked.result is not None and acked.result.exception(0).code == codec.ERR_NOT_CONNECTED
    assert len(table) == 0


def test_events_for_unknown_flows_are_ignored():
    table = FlowTable()
    table.acked(ack(99))
    table.returned(99, "[]")
    table.ack_timed_out(99)
    table.result_timed_out(99)
    assert len(table) == 0
