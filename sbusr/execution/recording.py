"""Process mode's request metrics: the master counts the calls its workers answered and the ``sys.*``
calls it answers itself.

A worker's ``Done`` carries one outcome per answered call, so the master counts each call once,
as thread mode's driver does, without parsing the packet. What the master answers itself (busy,
starting, shutting down, time limits, crashes) goes through its replies
(:mod:`sbusr.transport.replies`), which count it there.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter

from sbusr import metrics
from sbusr.execution.events import MasterEvents
from sbusr.execution.messages import RESULT, Outcome
from sbusr.smartbus.codec import Address


class RecordingEvents(MasterEvents):
    """Master hooks that record every worker-answered call in ``recorder``."""

    def __init__(self, recorder: metrics.RequestMetrics) -> None:
        self.recorder = recorder

    def call_done(self, pid: int, outcomes: Sequence[Outcome], seconds: float, caller: Address) -> None:
        if not outcomes:  # notifications only: nobody was answered
            return
        recorder = self.recorder
        recorder.request_received(len(outcomes))
        started = perf_counter() - seconds
        for outcome in outcomes:
            if outcome.code == RESULT:
                recorder.request_done(outcome.method or metrics.UNKNOWN_METHOD, None, started)
            else:
                recorder.request_done(outcome.method or metrics.UNKNOWN_METHOD, outcome.code, started,
                                      f"{caller.unit}:{caller.client}", outcome.message)
