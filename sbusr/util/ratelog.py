"""A log line per key (peer, reason) and interval, with a count of what was held back.

A flood of bad packets from one peer must not flood the log, yet the first line of each kind must
appear at once and the operator must learn how many were suppressed. oslo.log's ``rate_limit``
filter is process-wide (one budget for every line of every logger, keyed by nothing), so it would
also swallow unrelated lines; this keys by what the caller says and leaves everything else alone.

Lives in ``sbusr.smartbus`` (the lowest layer) so that the bus, the clients and the layers above
can all use it. Thread-safe; a bounded number of keys is remembered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["RateLimitedLog"]

#: keys remembered at most; the oldest is forgotten first (spoofed peers must not grow memory)
MAX_KEYS = 1024


class RateLimitedLog:
    """``log(key, msg, *args)`` writes at most one line per ``key`` every ``interval`` seconds.

    The next line written for a key after some were held back ends with
    "(N similar lines suppressed in the last S s)".
    """

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, interval: float = 10.0,
                 clock=time.monotonic) -> None:
        self.logger = logger
        self.level = level
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._state: OrderedDict[Hashable, list[float | int]] = OrderedDict()  # key -> [next, suppressed]

    def log(self, key: Hashable, msg: str, *args: object, level: int | None = None) -> bool:
        """Log unless ``key`` logged within the interval; returns whether a line was written."""
        level = self.level if level is None else level
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        with self._lock:
            state = self._state.get(key)
            if state is not None and now < state[0]:
                state[1] += 1
                return False
            suppressed = int(state[1]) if state is not None else 0
            if state is None:
                self._state[key] = [now + self.interval, 0]
                if len(self._state) > MAX_KEYS:
                    self._state.popitem(last=False)
            else:
                state[0], state[1] = now + self.interval, 0
                self._state.move_to_end(key)
        if suppressed:
            msg += " (%d similar lines suppressed in the last %g s)"
            args = (*args, suppressed, self.interval)
        self.logger.log(level, msg, *args)
        return True

    def __call__(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(key, msg, *args)
