"""Hot standby: a second server with the same bus identity waits, retrying, until the first one leaves.

The bus refuses a registration whose identity is taken; the client retries every
:data:`STANDBY_RETRY` seconds. What matters to an operator is said without flooding the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sbusr.util import ready

LOG = logging.getLogger(__name__)

#: Seconds between registration attempts while the bus reports our identity taken: a hot standby
#: (a second server with the same identity) takes over this soon after the first one leaves.
STANDBY_RETRY = 1.0
#: Seconds between two "still standing by" lines of a hot standby
STANDBY_SUMMARY_INTERVAL = 60.0


class Standby:
    """What a hot standby says: one WARNING when the bus first reports its identity taken, then one
    summary line a minute while it stays refused, and one line when it registers at last."""

    def __init__(self, where: str, address: object, clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self.address = address
        self._clock = clock
        self.since: float | None = None
        self._refused = 0
        self._reported = 0.0

    @property
    def standing_by(self) -> bool:
        return self.since is not None

    def refused(self) -> None:
        now = self._clock()
        if self.since is None:
            self.since, self._reported, self._refused = now, now, 0
            LOG.warning("SmartBus %s: identity %s is taken by another process; standing by and retrying "
                        "every %g s (hot standby)", self.where, self.address, STANDBY_RETRY)
            ready.event("standby", after=frozenset({"serving"}))  # after the line: a reader finds it
            return
        self._refused += 1
        if now - self._reported >= STANDBY_SUMMARY_INTERVAL:
            LOG.info("SmartBus %s: still standing by as %s for %.0f s (%d registrations refused in the "
                     "last %.0f s)", self.where, self.address, now - self.since, self._refused,
                     now - self._reported)
            self._reported, self._refused = now, 0

    def registered(self) -> None:
        if self.since is not None:
            LOG.warning("SmartBus %s: identity %s is free again; taking over after %.0f s standing by",
                        self.where, self.address, self._clock() - self.since)
            self.since = None
