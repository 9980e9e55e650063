"""The timer scheduler of sbusr-server: one per server, so each tick runs exactly once (once in
every worker process for a timer with ``target="workers"``).

It lives in the server process and knows nothing about threads or worker processes: a tick is a
JSON-RPC call of ``sbusr.timer.run`` handed to ``call`` (sbusr-server sends it to its own SmartBus
address), so it is admitted, limited in time and answered like any request, in either execution
mode. A timer whose previous run has not answered yet skips the tick with a WARNING; while the
server is not registered on the bus (e.g. a hot standby waiting for its identity) ticks are not run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sbusr.jsonrpc.errors import RpcError
from sbusr.timers.schedule import Schedule, Target, TimerEntry, wall_to_iso

LOG = logging.getLogger("sbusr.timer")

#: ``call(method, params, timeout)`` -> the call's result; raises RpcError or TimeoutError
Caller = Callable[[str, dict[str, Any], float | None], Any]
#: ``call_each(method, params, timeout)`` -> one result or exception per worker process
EachCaller = Callable[[str, dict[str, Any], float | None], list[Any]]

RUN_METHOD = "sbusr.timer.run"
#: seconds on top of the call time limit to wait for a tick's reply before calling it lost
REPLY_MARGIN = 30.0


@dataclass
class _Timer:
    entry: TimerEntry
    next_wall: float
    next_mono: float
    runs: int = 0
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    off_bus: int = 0
    running_since: float | None = None
    last: dict[str, Any] = field(default_factory=dict)

    def plan(self, after_wall: float) -> None:
        self.next_wall = self.entry.schedule.next_after(after_wall)
        self.next_mono = time.monotonic() + max(0.0, self.next_wall - time.time())


class Scheduler:
    """Fires each timer's ticks through ``call``; :meth:`update` swaps the timer table (reload)."""

    def __init__(self, call: Caller, call_timeout: float, on_bus: Callable[[], bool] = lambda: True,
                 call_each: EachCaller | None = None) -> None:
        self._call = call
        self._call_each = call_each
        self._on_bus = on_bus
        self._reply_timeout = call_timeout + REPLY_MARGIN if call_timeout else None
        self._timers: dict[tuple[str, str, Schedule, Target], _Timer] = {}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._ticks: set[threading.Thread] = set()

    # ------------------------------------------------------------------ table

    def update(self, entries: list[TimerEntry]) -> None:
        """Serve exactly ``entries`` from now on; unchanged timers keep their plan and counts."""
        now = time.time()
        with self._cond:
            old = self._timers
            table: dict[tuple[str, str, Schedule, Target], _Timer] = {}
            for entry in entries:
                key = (entry.module, entry.qualname, entry.schedule, entry.target)
                timer = old.get(key)
                if timer is None:
                    timer = _Timer(entry, 0.0, 0.0)
                    timer.plan(now)
                    LOG.info("timer %s: %s%s, first run %s", entry.name, entry.schedule.describe(),
                             " in every worker" if entry.target == Target.WORKERS else "",
                             wall_to_iso(timer.next_wall))
                else:
                    timer.entry = entry
                table[key] = timer
            for key, timer in old.items():
                if key not in table:
                    LOG.info("timer %s dropped (%s)", timer.entry.name, self._counts(timer))
            self._timers = table
            self._cond.notify_all()

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, name="sbusr-timers", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """No more ticks (the ones in flight go on)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)

    def stop(self, timeout: float = 10.0) -> None:
        """Halt, wait (bounded) for the ticks in flight, then log each timer's counts."""
        self.halt()
        with self._cond:
            ticks = list(self._ticks)
        deadline = time.monotonic() + timeout
        for tick in ticks:
            tick.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            for timer in self._timers.values():
                LOG.info("timer %s stopped: %s", timer.entry.name, self._counts(timer))

    def _loop(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for timer in list(self._timers.values()):
                    if timer.next_mono <= now:
                        self._fire(timer)
                        timer.plan(max(time.time(), timer.next_wall))
                waits = [t.next_mono for t in self._timers.values()]
                self._cond.wait(max(0.0, min(waits) - time.monotonic()) if waits else None)

    def _fire(self, timer: _Timer) -> None:
        """Called with the lock held."""
        if not self._on_bus():
            # a server that is not registered serves no one: a hot standby must not run the timers too
            timer.off_bus += 1
            return
        if timer.running_since is not None:
            timer.skipped += 1
            LOG.warning("timer %s: the run started %.1f s ago is still going; tick skipped",
                        timer.entry.name, time.monotonic() - timer.running_since)
            return
        timer.runs += 1
        timer.running_since = time.monotonic()
        tick = threading.Thread(target=self._tick, args=(timer,), name=f"sbusr-timer-{timer.entry.name}",
                                daemon=True)
        self._ticks.add(tick)
        tick.start()

    def _tick(self, timer: _Timer) -> None:
        started_wall = time.time()
        started = time.monotonic()
        outcome: dict[str, Any]
        if timer.entry.target == Target.WORKERS and self._call_each is not None:
            outcome = self._tick_each(timer)
        else:
            try:
                result: Any = self._call(RUN_METHOD, timer.entry.params(), self._reply_timeout)
            except Exception as exc:
                result = exc
            outcome = self._outcome(timer, result)
        outcome["started"] = wall_to_iso(started_wall)
        outcome["seconds"] = round(time.monotonic() - started, 3)
        with self._cond:
            if outcome["outcome"] == "ok":
                timer.ok += 1
            else:
                timer.errors += 1
            timer.last = outcome
            timer.running_since = None
            self._ticks.discard(threading.current_thread())

    def _tick_each(self, timer: _Timer) -> dict[str, Any]:
        """One tick in every worker process: ok when all of them ran it."""
        assert self._call_each is not None
        try:
            results = self._call_each(RUN_METHOD, timer.entry.params(), self._reply_timeout)
        except Exception as exc:
            results = [exc]
        outcomes = [self._outcome(timer, result) for result in results]
        failed = [o for o in outcomes if o["outcome"] != "ok"]
        outcome: dict[str, Any] = {"outcome": "error" if failed or not outcomes else "ok",
                                   "workers": len(outcomes), "workers_failed": len(failed)}
        if failed:
            outcome["error"] = failed[0].get("error")
        elif not outcomes:
            outcome["error"] = "no worker process serves"
        return outcome

    @staticmethod
    def _outcome(timer: _Timer, result: Any) -> dict[str, Any]:
        """The outcome of one ``sbusr.timer.run`` call: its result, or the exception it raised."""
        if isinstance(result, RpcError):
            LOG.warning("timer %s: the tick was answered with error %s %s", timer.entry.name, result.code,
                        result.message)
            return {"outcome": "error", "error": f"{result.code}: {result.message}"}
        if isinstance(result, Exception):  # no reply (timeout), not serving, bus errors
            error = f"{type(result).__name__}: {result}"
            LOG.warning("timer %s: the tick got no answer: %s", timer.entry.name, error)
            return {"outcome": "error", "error": error}
        if isinstance(result, dict) and "outcome" in result:
            return dict(result)
        return {"outcome": "error", "error": f"unexpected answer {result!r:.200}"}

    # ------------------------------------------------------------------ reporting

    @staticmethod
    def _counts(timer: _Timer) -> str:
        return f"{timer.runs} runs ({timer.ok} ok, {timer.errors} failed), {timer.skipped} skipped"

    def describe(self) -> list[dict[str, Any]]:
        """What ``sys.timers`` answers."""
        with self._cond:
            return [{"name": t.entry.name, "schedule": t.entry.schedule.describe(),
                     "target": str(t.entry.target), "next_run": wall_to_iso(t.next_wall),
                     "running": t.running_since is not None, "runs": t.runs, "ok": t.ok,
                     "failed": t.errors, "skipped": t.skipped, "not_on_bus": t.off_bus,
                     "last": dict(t.last) or None}
                    for t in sorted(self._timers.values(), key=lambda t: t.entry.name)]
