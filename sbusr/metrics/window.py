"""Request figures per method: the last minute, the last 10 minutes and everything since start.

The request path calls :meth:`RollingWindow.record` once per answered call, which only appends to a
deque; the calls are sorted in later, in batches, under one lock, into one-second cells of fine
latency bins. The status page's percentiles and the Prometheus histogram are both read from those
bins, so a call is counted once for both (the fine bounds include every Prometheus bound exactly).
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.utils import floatToGoString

#: Prometheus buckets of sbusr_request_duration_seconds: 0.1 ms to 30 s
PROMETHEUS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                      1.0, 2.5, 5.0, 10.0, 30.0)
#: neighbouring fine bounds differ by at most this factor: percentiles are within about 5 %
FINE_RATIO = 1.1
LOWEST_BOUND = 0.00001  # 10 µs: nothing on the bus is faster
MINUTE = 60
HISTORY_STEP = 10  # seconds per point of the 10-minute history
HISTORY_POINTS = 60
RECENT_ERRORS = 20
MESSAGE_MAX = 300  # characters of an error message kept for the status page
FOLD_AT = 512  # calls waiting before one of the callers sorts them in


def _fine_bounds() -> tuple[float, ...]:
    bounds: list[float] = []
    low = LOWEST_BOUND
    for high in PROMETHEUS_BUCKETS:
        steps = max(1, math.ceil(math.log(high / low) / math.log(FINE_RATIO)))
        bounds.extend(low * (high / low) ** (k / steps) for k in range(1, steps))
        bounds.append(high)  # the exact Prometheus bound, so cumulative bucket counts are exact
        low = high
    return (LOWEST_BOUND, *bounds)


BOUNDS = _fine_bounds()
NBINS = len(BOUNDS) + 1  # the last bin holds everything above 30 s
_PROMETHEUS_INDEX = tuple(BOUNDS.index(b) for b in PROMETHEUS_BUCKETS)


class Cell:
    """Calls of one method (or of all) in some period: count per outcome, latency bins, total seconds."""

    __slots__ = ("bins", "outcomes", "seconds")

    def __init__(self) -> None:
        self.outcomes: dict[int | None, int] = {}  # None = result, else the JSON-RPC error code
        self.bins = [0] * NBINS
        self.seconds = 0.0

    def merge(self, other: Cell) -> None:
        for code, n in other.outcomes.items():
            self.outcomes[code] = self.outcomes.get(code, 0) + n
        self.bins = [a + b for a, b in zip(self.bins, other.bins, strict=True)]
        self.seconds += other.seconds

    @property
    def count(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.outcomes.items() if code is not None)

    def errors_by_code(self) -> dict[str, int]:
        return {str(code): n for code, n in sorted(self.outcomes.items(), key=lambda kv: kv[0] or 0)
                if code is not None}

    def quantile(self, q: float) -> float | None:
        """Latency in seconds below which a fraction ``q`` of the calls fell (None without calls)."""
        total = sum(self.bins)
        if not total:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for i, n in enumerate(self.bins):
            seen += n
            if seen >= rank:
                if i == 0:
                    return BOUNDS[0]
                if i == len(BOUNDS):
                    return BOUNDS[-1]
                return math.sqrt(BOUNDS[i - 1] * BOUNDS[i])  # geometric middle of the bin
        return BOUNDS[-1]

    def prometheus_buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs for a Prometheus histogram, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        cumulative = 0
        previous = -1
        for bound, index in zip(PROMETHEUS_BUCKETS, _PROMETHEUS_INDEX, strict=True):
            cumulative += sum(self.bins[previous + 1:index + 1])
            previous = index
            out.append((_le(bound), cumulative))
        out.append(("+Inf", sum(self.bins)))
        return out


def _le(bound: float) -> str:
    return floatToGoString(bound)  # the same text prometheus_client's own Histogram writes


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


class RollingWindow:
    """Thread-safe one-second cells of the recent past plus running totals since start.

    ``clock`` is monotonic seconds (the callers pass the ``time.perf_counter()`` they already read);
    wall-clock times are only computed for the snapshot. The request path only appends to a deque
    (atomic, no lock); the calls are sorted into cells in batches, by whichever call finds
    ``FOLD_AT`` of them waiting, and before every read.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self.started = clock()
        self._second = int(self.started)
        #: answered calls waiting to be sorted in, as ``record`` appends them (the request path may
        #: append ``(method, code, seconds, now, caller, message)`` itself: deque.append is atomic)
        self.pending: deque[tuple[str, int | None, float, float, Any, Any]] = deque()
        self._received = itertools.count()  # next() is atomic: no lock on the request path
        #: call once per call received (for the in-flight count)
        self.count_received = self._received.__next__
        self._reads = 0  # next() calls made to read the count, not for requests
        self._current: dict[str, Cell] = {}
        self._seconds: deque[tuple[int, dict[str, Cell]]] = deque()  # the last minute, current excluded
        self._totals: dict[str, Cell] = {}  # every second before the current one
        self._history: deque[tuple[int, Cell]] = deque()  # HISTORY_STEP-second points
        self._errors: deque[tuple[float, str, int, str, str]] = deque(maxlen=RECENT_ERRORS)
        self._answered = 0

    # ------------------------------------------------------------------ the request path

    def receive(self, calls: int = 1) -> None:
        """``calls`` calls arrived that will be answered (for the in-flight count)."""
        for _ in range(calls):
            self.count_received()

    def record(self, method: str, code: int | None, seconds: float, now: float,
               caller: Any = None, message: Any = None) -> None:
        """Count one answered call; ``caller`` and ``message`` are only looked at for errors."""
        pending = self.pending
        pending.append((method, code, seconds, now, caller, message))
        if len(pending) >= FOLD_AT:
            self.fold(blocking=False)

    def fold(self, blocking: bool = True) -> None:
        """Sort the waiting calls into their cells (skipped when another thread is at it)."""
        if not self._lock.acquire(blocking):
            return
        try:
            self._fold()
        finally:
            self._lock.release()

    def _fold(self) -> None:
        popleft = self.pending.popleft
        current = self._current
        offset = None
        bounds = BOUNDS
        folded = 0
        while True:
            try:
                method, code, seconds, now, caller, message = popleft()
            except IndexError:
                break
            folded += 1
            second = int(now)
            if second > self._second:
                self._roll(second)
                current = self._current
            cell = current.get(method)
            if cell is None:
                cell = current[method] = Cell()
            outcomes = cell.outcomes
            outcomes[code] = outcomes.get(code, 0) + 1
            cell.bins[bisect_left(bounds, seconds)] += 1
            cell.seconds += seconds
            if code is not None:
                if offset is None:
                    offset = self._wall() - self._clock()
                self._errors.append((now + offset, method, code, "" if caller is None else str(caller),
                                     "" if message is None else str(message)[:MESSAGE_MAX]))
        self._answered += folded

    def _count_received(self) -> int:
        """Calls received so far (caller holds the lock)."""
        value = next(self._received) - self._reads
        self._reads += 1
        return value

    @property
    def in_flight(self) -> int:
        """Calls received and not answered yet."""
        with self._lock:
            self._fold()
            return max(0, self._count_received() - self._answered)

    # ------------------------------------------------------------------ bookkeeping

    def _roll(self, second: int) -> None:
        """Retire the current second's cells (caller holds the lock)."""
        if self._current:
            done = self._second
            self._seconds.append((done, self._current))
            step = done - done % HISTORY_STEP
            if not self._history or self._history[-1][0] != step:
                self._history.append((step, Cell()))
            point = self._history[-1][1]
            for method, cell in self._current.items():
                total = self._totals.get(method)
                if total is None:
                    total = self._totals[method] = Cell()
                total.merge(cell)
                point.merge(cell)
            self._current = {}
        self._second = second
        while self._seconds and self._seconds[0][0] <= second - MINUTE:
            self._seconds.popleft()
        while self._history and self._history[0][0] <= second - HISTORY_STEP * HISTORY_POINTS:
            self._history.popleft()

    def totals(self) -> dict[str, Cell]:
        """Everything since start, per method (copies)."""
        with self._lock:
            self._fold()
            return _merged([self._totals, self._current])

    # ------------------------------------------------------------------ the status page

    def snapshot(self) -> dict[str, Any]:
        """JSON-friendly figures for ``sys.stats``: per method, recent errors, 10-minute history."""
        with self._lock:
            self._fold()
            now = self._clock()
            if int(now) > self._second:
                self._roll(int(now))
            # retired seconds never change again: copy only what is still being added to
            current = _merged([self._current])
            totals = _merged([self._totals, current])
            seconds = [cells for _, cells in self._seconds]
            history = list(self._history)
            if history:
                history[-1] = (history[-1][0], _copy(history[-1][1]))
            errors = list(self._errors)
            in_flight = max(0, self._count_received() - self._answered)
        minute = _merged([*seconds, current])
        wall_now = self._wall()
        span = max(1.0, min(float(MINUTE), now - self.started))
        methods = []
        for name in sorted(set(totals) | set(minute)):
            total = totals.get(name) or Cell()
            recent = minute.get(name) or Cell()
            methods.append({
                "method": name, "calls": total.count, "errors": total.errors,
                "rate": round(recent.count / span, 2),
                "p50_ms": _ms(recent.quantile(0.5)), "p99_ms": _ms(recent.quantile(0.99)),
                "minute": {"calls": recent.count, "errors": recent.errors_by_code()},
            })
        everything = _sum(minute.values())
        return {
            "uptime_s": round(now - self.started, 1),
            "in_flight": in_flight,
            "calls": sum(c.count for c in totals.values()),
            "errors": sum(c.errors for c in totals.values()),
            "minute": {"calls": everything.count, "errors": everything.errors,
                       "rate": round(everything.count / span, 2),
                       "p50_ms": _ms(everything.quantile(0.5)), "p99_ms": _ms(everything.quantile(0.99))},
            "methods": methods,
            "recent_errors": [{"time": round(t, 3), "method": m, "code": code, "caller": who, "message": text}
                              for t, m, code, who, text in reversed(errors)],
            "history": self._history_points(history, current, now, wall_now),
        }

    def _history_points(self, history: list[tuple[int, Cell]], current: dict[str, Cell], now: float,
                        wall_now: float) -> dict[str, Any]:
        points = dict(history)
        this_step = int(now) - int(now) % HISTORY_STEP
        if current:
            points.setdefault(this_step, Cell()).merge(_sum(current.values()))
        first = max(this_step - (HISTORY_POINTS - 1) * HISTORY_STEP,
                    int(self.started) - int(self.started) % HISTORY_STEP)  # nothing before this process
        rates: list[float] = []
        p99: list[float | None] = []
        errors: list[int] = []
        for step in range(first, this_step + 1, HISTORY_STEP):
            cell = points.get(step) or Cell()
            # the current step is still filling up: divide by the seconds it has had so far
            length = max(1.0, min(HISTORY_STEP, now - step)) if step == this_step else HISTORY_STEP
            rates.append(round(cell.count / length, 2))
            p99.append(_ms(cell.quantile(0.99)))
            errors.append(cell.errors)
        # parallel arrays, point k starting at start + k * step_s: a third of the bytes of objects
        return {"step_s": HISTORY_STEP, "start": round(wall_now - (now - first), 1), "rate": rates,
                "p99_ms": p99, "errors": errors}


def _copy(cell: Cell) -> Cell:
    out = Cell()
    out.merge(cell)
    return out


def _sum(cells: Iterable[Cell]) -> Cell:
    out = Cell()
    for cell in cells:
        out.merge(cell)
    return out


def _merged(groups: list[dict[str, Cell]]) -> dict[str, Cell]:
    out: dict[str, Cell] = {}
    for group in groups:
        for name, cell in group.items():
            target = out.get(name)
            if target is None:
                target = out[name] = Cell()
            target.merge(cell)
    return out


def fit(snapshot: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Shrink a snapshot (in place) until its JSON takes at most ``max_bytes``.

    A reply travels in one SmartBus NOTIFY (at most 15,999 bytes): long error messages are cut
    first, then the oldest errors go, then the methods with the fewest calls (``truncated`` says so).
    """
    errors: list[dict[str, Any]] = snapshot.get("recent_errors", [])
    methods: list[dict[str, Any]] = snapshot.get("methods", [])
    cut = MESSAGE_MAX
    while len(json.dumps(snapshot)) > max_bytes:
        if cut > 60 and any(len(e["message"]) > 60 for e in errors):
            cut //= 2
            for error in errors:
                error["message"] = error["message"][:cut]
        elif errors:
            errors.pop()  # newest first: the oldest goes
        elif len(methods) > 1:
            methods.remove(min(methods, key=lambda m: m["calls"]))
            snapshot["truncated"] = True
        else:
            break
    return snapshot
