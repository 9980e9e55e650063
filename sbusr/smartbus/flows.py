"""The flow starts a SmartBus client has in flight, one table for every backend.

A CALL_FLOW is answered by an ack and, when a result was asked for, a result, both matched by
invoke id on the backend's thread. The table resolves the invocation's futures, fails a wanted
result at once when the ack is an error (no result can follow it), and forgets a flow as soon as
nothing more is awaited for it. A backend that times flows out itself (the native client) hands in
its timer handles, cancelled here when they are no longer needed; the vendor library times out on
its own and reports it as an event.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from sbusr.smartbus import codec
from sbusr.smartbus.interface import BusError, FlowAckEvent, FlowInvocation, FlowTimeout, fail, resolve

LOG = logging.getLogger(__name__)


class Timer(Protocol):
    """What the table needs of a backend's timer handle (``asyncio.TimerHandle`` has it)."""

    def cancel(self) -> None: ...


@dataclass(slots=True)
class _Flow:
    invocation: FlowInvocation
    ack_timer: Timer | None
    result_timer: Timer | None
    awaits_ack: bool = True
    awaits_result: bool = False


class FlowTable:
    """invoke id -> the invocation's futures, until its ack (and result, if wanted) arrive or time out.

    Thread-safe. ``lock`` is re-entrant: a backend whose replies may be handled before its send
    call returns holds it across sending a flow and :meth:`add`.
    """

    def __init__(self) -> None:
        self._flows: dict[int, _Flow] = {}
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._flows)

    def add(self, invocation: FlowInvocation, ack_timer: Timer | None = None,
            result_timer: Timer | None = None) -> None:
        """Track a flow just sent; the timers, if any, call the ``*_timed_out`` methods."""
        flow = _Flow(invocation, ack_timer, result_timer, awaits_result=invocation.result is not None)
        with self.lock:
            self._flows[invocation.invoke_id] = flow

    # ------------------------------------------------------------------ events

    def acked(self, event: FlowAckEvent) -> None:
        """An ack arrived; an error ack also fails a wanted result."""
        with self.lock:
            flow = self._flows.get(event.invoke_id)
            if flow is None or not flow.awaits_ack:
                LOG.debug("SmartBus: late or duplicate flow ack %d ignored", event.invoke_id)
                return
            flow.awaits_ack = False
            _cancel(flow.ack_timer)
            inv = flow.invocation
            resolve(inv.ack, event)
            if event.ack != codec.FLOW_ACK_OK and flow.awaits_result and inv.result is not None:
                flow.awaits_result = False
                _cancel(flow.result_timer)
                fail(inv.result, BusError(f"flow {event.invoke_id} failed to start: {event.ack} "
                                          f"{event.message}".rstrip(), event.ack))
            self._forget_if_done(event.invoke_id, flow)

    def returned(self, invoke_id: int, result: str) -> None:
        """A flow's result arrived."""
        with self.lock:
            flow = self._flows.get(invoke_id)
            if flow is None or not flow.awaits_result or flow.invocation.result is None:
                LOG.debug("SmartBus: late or unexpected flow result %d ignored", invoke_id)
                return
            flow.awaits_result = False
            _cancel(flow.result_timer)
            resolve(flow.invocation.result, result)
            self._forget_if_done(invoke_id, flow)

    def ack_timed_out(self, invoke_id: int) -> None:
        """No ack in time: the ack fails with FlowTimeout (a wanted result keeps its own timeout)."""
        with self.lock:
            flow = self._flows.get(invoke_id)
            if flow is None or not flow.awaits_ack:
                return
            flow.awaits_ack = False
            fail(flow.invocation.ack,
                 FlowTimeout(f"no ack for flow invocation {invoke_id}", codec.ERR_TIMEOUT))
            self._forget_if_done(invoke_id, flow)

    def result_timed_out(self, invoke_id: int) -> None:
        """No result in time: the result fails with FlowTimeout."""
        with self.lock:
            flow = self._flows.get(invoke_id)
            if flow is None or not flow.awaits_result:
                return
            flow.awaits_result = False
            if flow.invocation.result is not None:
                fail(flow.invocation.result,
                     FlowTimeout(f"no result for flow invocation {invoke_id}", codec.ERR_TIMEOUT))
            self._forget_if_done(invoke_id, flow)

    def fail_all(self, error: BaseException) -> None:
        """The client stopped: fail everything still awaited and forget every flow."""
        with self.lock:
            flows, self._flows = self._flows, {}
        for flow in flows.values():
            _cancel(flow.ack_timer)
            _cancel(flow.result_timer)
            inv = flow.invocation
            fail(inv.ack, error)
            if inv.result is not None:
                fail(inv.result, error)

    def _forget_if_done(self, invoke_id: int, flow: _Flow) -> None:
        if not flow.awaits_ack and not flow.awaits_result:
            self._flows.pop(invoke_id, None)


def _cancel(timer: Timer | None) -> None:
    if timer is not None:
        timer.cancel()
