"""Generations of workers: the set that takes new packets, and the one a reload starts beside it.

A reload starts a whole new generation; it takes new packets once all of it is ready (or, after
:data:`RELOAD_TIMEOUT`, whatever part is ready), while the old one finishes what it holds and exits.
A generation none of whose workers can boot is given up: the first one stops the server, a reload's
leaves the running one serving. Touched on the relay loop only, apart from :meth:`wait_ready`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
from typing import TYPE_CHECKING, Any

from sbusr.execution import messages
from sbusr.execution.hooks import BootFailed
from sbusr.execution.master.workers import KillReason, RestartReason, Worker, WorkerState
from sbusr.jsonrpc.errors import ServerBusy

if TYPE_CHECKING:
    from sbusr.execution.master.relay import Master

LOG = logging.getLogger("sbusr.execution")

#: Seconds a reload waits for all of the new generation; it then switches to whatever is ready.
RELOAD_TIMEOUT = 60.0

Summary = dict[str, Any]


class Generations:
    """Which generation serves, which one is starting, and who waits for the switch."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.current = 0  # the generation taking new packets (0: none yet)
        self.staged: int | None = None  # a generation starting up for a reload
        self._next = 1
        self._waiters: list[concurrent.futures.Future[Summary]] = []
        self.boot_failures: collections.Counter[int] = collections.Counter()  # generation -> in a row
        self.gave_up: BootFailed | None = None
        self.ready = threading.Event()
        self.settled = threading.Event()  # the first generation serves, or the master gave up

    def wanted(self, generation: int) -> bool:
        """True while workers of ``generation`` should run (it serves or is starting)."""
        return not self.master.stopping and generation in (self.current, self.staged)

    def members(self, generation: int, state: WorkerState | None = None) -> list[Worker]:
        return [w for w in self.master.workers
                if w.generation == generation and (state is None or w.state == state)]

    def begin(self, fut: concurrent.futures.Future[Summary]) -> None:
        """Start a generation (the first, or a reload's); ``fut`` gets the summary after the switch."""
        master = self.master
        if master.stopping:
            fut.set_exception(ServerBusy("server is shutting down"))
            return
        if self.staged is not None:  # a reload is already starting workers: it serves this one too
            self._waiters.append(fut)
            return
        generation = self._next
        self._next += 1
        self.staged = generation
        self._waiters.append(fut)
        reason = RestartReason.RELOAD if self.current else None
        if reason:
            LOG.info("reload: starting %d workers of generation %d", master.size, generation)
        for _ in range(master.size):
            master.pool.spawn(generation, reason)
        master.loop.call_later(RELOAD_TIMEOUT, self._stage_timed_out, generation)

    def _stage_timed_out(self, generation: int) -> None:
        if self.staged != generation:
            return
        master = self.master
        ready = self.members(generation, WorkerState.READY)
        if ready:
            LOG.warning("only %d of %d workers of generation %d ready after %g s; switching anyway",
                        len(ready), master.size, generation, RELOAD_TIMEOUT)
            self.switch(generation)
        elif self.current:
            LOG.error("no worker of generation %d ready after %g s; the previous code stays in service",
                      generation, RELOAD_TIMEOUT)
            self.staged = None
            for worker in self.members(generation):
                master.kill_worker(worker, KillReason.OBSOLETE)
            self.fail_waiters(RuntimeError("no new worker became ready; reload abandoned"))
        else:  # the first generation: keep trying, requests are answered "starting" meanwhile
            LOG.error("no worker ready after %g s; still trying", RELOAD_TIMEOUT)
            master.loop.call_later(RELOAD_TIMEOUT, self._stage_timed_out, generation)

    def on_ready(self, generation: int) -> None:
        """A worker of a staged ``generation`` became ready: switch once all of it is."""
        if len(self.members(generation, WorkerState.READY)) >= self.master.size:
            self.switch(generation)

    def switch(self, generation: int) -> None:
        """``generation`` takes new packets; the previous one finishes its calls and exits."""
        master = self.master
        old = self.current
        self.current = generation
        self.staged = None
        master.generation_switched(old, generation)
        if old:
            LOG.info("reload: generation %d serves; generation %d finishes its calls and exits",
                     generation, old)
        self.ready.set()
        self.settled.set()
        summary = self.summary()
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(summary)

    def give_up(self, generation: int, failures: int, cause: str, detail: str) -> None:
        """No worker of a starting generation could boot MAX_BOOT_FAILURES times in a row."""
        self.staged = None
        self.boot_failures.pop(generation, None)
        for other in self.members(generation):
            self.master.kill_worker(other, KillReason.OBSOLETE)
        if self.current:  # the reload's caller says it (sbusr-server: one ERROR line)
            error = BootFailed(f"new workers failed to boot {failures} times: {cause}", detail)
        else:
            error = BootFailed(f"{cause} ({failures} attempts)", detail)
            self.gave_up = error
            self.settled.set()
        self.fail_waiters(error)

    def fail_waiters(self, error: BaseException) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(error)

    def current_ready(self) -> messages.Ready | None:
        for worker in list(self.master.workers):
            if worker.generation == self.current and worker.ready is not None:
                return worker.ready
        return None

    def summary(self) -> Summary:
        ready = self.current_ready()
        return {"methods": ready.methods if ready else [], "duplicates": ready.duplicates if ready else [],
                "workers": self.master.snapshot()}
