"""What the process-mode master reports, in one place: metrics and a status page plug in here.

:class:`MasterEvents` is a no-op base (apart from DEBUG logs); pass a subclass to
:class:`sbusr.execution.master.relay.Master`. Every method is called on the master's relay thread and must
return quickly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sbusr.execution.messages import Outcome
from sbusr.smartbus.codec import Address

LOG = logging.getLogger("sbusr.execution")


class MasterEvents:
    """Hooks of the master (calls, workers, queue); override what you need."""

    def call_dispatched(self, pid: int, waited: float) -> None:
        """A request packet went to worker ``pid`` after ``waited`` seconds in the master's queue."""

    def call_started(self, pid: int, method: str, timeout: float) -> None:
        """Worker ``pid`` reported a call whose limit differs from ``call_timeout`` (or of a batch)."""

    def call_done(self, pid: int, outcomes: Sequence[Outcome], seconds: float, caller: Address) -> None:
        """Worker ``pid`` (the master's own pid for the ``sys.*`` calls it answers) finished a packet
        from ``caller``, ``seconds`` after it arrived; one outcome per answered call (``code`` 0 = result)."""

    def answered_for_worker(self, method: str, code: int, reason: str) -> None:
        """The master answered a worker's call for it: reason "timeout", "crash" or "shutdown"."""

    def refused(self, reason: str) -> None:
        """A request packet was answered -32002 at once: "busy", "starting" or "shutting down"."""

    def queue_length(self, length: int) -> None:
        """Packets waiting in the master for a free worker."""

    def worker_state(self, pid: int, generation: int, state: str) -> None:
        """A worker became "starting", "ready", "retiring" or "exited"."""
        LOG.debug("worker pid %s (generation %d) %s", pid, generation, state)

    def worker_restart(self, reason: str) -> None:
        """A replacement worker is being started: "crash", "timeout", "recycle" or "reload"."""
