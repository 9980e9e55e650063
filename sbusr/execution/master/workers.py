"""Worker processes as the master sees them: start, attach, boot failures, retire, crash, reap.

Workers are forked by the fork server (:mod:`sbusr.execution.forkserver`), each with one end of a
socketpair as its link. Without one (it could not start, or it died), they are fresh interpreters
started with ``subprocess`` (fork+exec in C: no Python code runs in the child before exec, so the
multi-threaded master is never forked in the unsafe sense). Starting and reaping block, so they
run on spawner threads and hop back to the relay loop; everything else here runs on that loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sbusr.execution import messages
from sbusr.execution.exits import describe_exit
from sbusr.execution.forkserver import ForkServer, ForkServerGone
from sbusr.jsonrpc.errors import WorkerCrashed
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Packet

if TYPE_CHECKING:
    from sbusr.execution.master.relay import Master

LOG = logging.getLogger("sbusr.execution")

#: Seconds a new worker may take to import, run worker_init and load endpoints before it is killed.
WORKER_START_TIMEOUT = 60.0
#: Seconds to wait for a dead worker's exit status before answering its calls without it.
EXIT_STATUS_WAIT = 2.0
#: Seconds a worker that was told to exit, with no call left, gets before it is killed.
RETIRE_GRACE = 5.0
#: Failed boots in a row (no worker of the generation became ready meanwhile) after which a
#: starting server gives up (exit 3) and a reload is abandoned (the running generation keeps serving).
MAX_BOOT_FAILURES = 3
#: Back-off before the n-th attempt to boot a worker after n - 1 failures in a row: doubling from
#: the first value up to the second (a replacement that cannot boot never spins).
BOOT_BACKOFF = (0.5, 60.0)


class WorkerProcess(Protocol):
    """What the master needs of a worker's process: a ``Popen`` or a :class:`ForkedProcess`."""

    pid: int

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int | None: ...
    def kill(self) -> None: ...


class WorkerState(enum.StrEnum):
    """starting -> ready -> retiring; dead once its link closed."""

    STARTING = "starting"
    READY = "ready"
    RETIRING = "retiring"
    DEAD = "dead"


class KillReason(enum.StrEnum):
    """Why the master SIGKILLed a worker (its calls are answered already)."""

    START_TIMEOUT = "start timeout"
    TIMEOUT = "timeout"  # a call overran its limit
    CRASH = "crash"  # it sent what does not decode
    OBSOLETE = "obsolete"  # its generation was abandoned
    SHUTDOWN = "shutdown"


class RestartReason(enum.StrEnum):
    """Why a replacement worker starts (``replaced`` counts and the worker_restart event)."""

    CRASH = "crash"
    TIMEOUT = "timeout"
    RECYCLE = "recycle"
    RELOAD = "reload"


class Flight:
    """A request packet a worker holds, until its ``Done``."""

    __slots__ = ("arrived", "deadline", "method", "packet", "sent", "timeout", "unlimited")

    def __init__(self, packet: Packet, arrived: float, sent: float, timeout: float) -> None:
        self.packet = packet
        self.arrived = arrived  # when the bus delivered it (before any wait in the queue)
        self.sent = sent
        self.timeout = timeout
        self.deadline: float | None = sent + timeout if timeout else None  # checked every tick
        self.method = ""
        self.unlimited = False


class Worker:
    """One worker process as the relay sees it (touched on the relay loop only)."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.state = WorkerState.STARTING
        self.process: WorkerProcess | None = None
        self.pid = 0
        self.transport: asyncio.Transport | None = None
        self.decoder = codec.FrameDecoder()
        self.sent = 0  # data packets sent: the seq of the last one
        self.flights: dict[int, Flight] = {}
        self.tasks = 0
        self.killed: KillReason | None = None
        self.start_timer: asyncio.TimerHandle | None = None
        self.ready: messages.Ready | None = None
        self.failed: messages.Failed | None = None  # why it cannot boot, as it said before exiting
        #: packets for this worker only (timer ticks with target="workers"), before the shared queue
        self.pinned: collections.deque[tuple[Packet, float]] = collections.deque()

    def __repr__(self) -> str:
        return f"<worker pid {self.pid} gen {self.generation} {self.state}>"

    def send(self, msg: messages.Message) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(messages.encode(msg))


class WorkerProtocol(asyncio.BufferedProtocol):
    """Reads into one preallocated buffer: a plain Protocol's recv allocates 256 KiB per read."""

    BUFFER_SIZE = 64 * 1024

    def __init__(self, master: Master, worker: Worker) -> None:
        self.master = master
        self.worker = worker
        self._buffer = bytearray(self.BUFFER_SIZE)
        self._view = memoryview(self._buffer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.worker.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.master.on_data(self.worker, bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.master.pool.on_link_closed(self.worker)


def kill(worker: Worker) -> None:
    """SIGKILL ``worker``'s process if it still runs."""
    if worker.process is not None and worker.process.poll() is None:
        try:
            worker.process.kill()
        except ProcessLookupError:
            pass


class WorkerPool:
    """Starts, replaces and reaps the master's worker processes."""

    def __init__(self, master: Master, worker_argv: Sequence[str], forks: ForkServer | None = None) -> None:
        self.master = master
        self._argv = list(worker_argv)
        self._forks = forks
        self.spawner = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, min(master.size, 8)),
                                                             thread_name_prefix="sbusr-spawn")
        self.replaced: collections.Counter[str] = collections.Counter()
        self.started = 0

    # ------------------------------------------------------------------ start

    def spawn(self, generation: int, reason: RestartReason | None, delay: float = 0.0) -> None:
        if reason is not None:
            self.replaced[reason] += 1
            self.master.events.worker_restart(reason)
        worker = Worker(generation)
        self.master.workers.append(worker)
        if delay:
            self.master.loop.call_later(delay, self._launch_in_background, worker)
        else:
            self._launch_in_background(worker)

    def _launch_in_background(self, worker: Worker) -> None:
        if not self.master.generations.wanted(worker.generation):
            self.master.workers.remove(worker)
            return
        try:
            self.spawner.submit(self._launch, worker)
        except RuntimeError:  # shutting down
            self.master.workers.remove(worker)

    def _launch(self, worker: Worker) -> None:
        """Spawner thread: start the process with one end of a socketpair."""
        loop = self.master.loop
        ours, theirs = socket.socketpair()
        try:
            process = self._start_process(theirs.fileno())
        except Exception as exc:
            ours.close()
            loop.call_soon_threadsafe(self._launch_failed, worker, exc)
            return
        finally:
            theirs.close()  # else our copy would hide the worker's death (no EOF)
        loop.call_soon_threadsafe(self._attach, worker, process, ours)

    def _start_process(self, link_fd: int) -> WorkerProcess:
        if self._forks is not None and not self._forks.gone:
            try:
                return self._forks.spawn(self._argv, link_fd)
            except ForkServerGone as exc:
                LOG.debug("forking a worker failed (%s); starting a fresh interpreter", exc)
        return subprocess.Popen(
            [sys.executable, "-m", "sbusr.cmd.worker", "--link-fd", str(link_fd), *self._argv],
            pass_fds=[link_fd], stdin=subprocess.DEVNULL, close_fds=True)

    def _launch_failed(self, worker: Worker, exc: BaseException) -> None:
        self.master.workers.remove(worker)
        self._boot_failed(worker, f"could not start a worker process: {exc}", "")

    def _attach(self, worker: Worker, process: WorkerProcess, sock: socket.socket) -> None:
        master = self.master
        worker.process = process
        worker.pid = process.pid
        self.started += 1
        master.events.worker_state(worker.pid, worker.generation, WorkerState.STARTING)
        if not master.generations.wanted(worker.generation):
            worker.killed = KillReason.OBSOLETE
            kill(worker)
            sock.close()
            master.workers.remove(worker)
            self.reap_later(worker)
            return
        sock.setblocking(False)
        master.loop.create_task(master.loop.connect_accepted_socket(
            lambda: WorkerProtocol(master, worker), sock))
        worker.start_timer = master.loop.call_later(WORKER_START_TIMEOUT, self._start_timed_out, worker)

    def _start_timed_out(self, worker: Worker) -> None:
        if worker.state == WorkerState.STARTING:
            LOG.error("worker pid %d not ready within %g s; killing it", worker.pid, WORKER_START_TIMEOUT)
            self.master.kill_worker(worker, KillReason.START_TIMEOUT)

    def on_ready(self, worker: Worker, msg: messages.Ready) -> None:
        master, generations = self.master, self.master.generations
        if worker.start_timer is not None:
            worker.start_timer.cancel()
            worker.start_timer = None
        worker.ready = msg
        generations.boot_failures.pop(worker.generation, None)
        if not generations.wanted(worker.generation):
            self.retire(worker)
            return
        worker.state = WorkerState.READY
        master.events.worker_state(worker.pid, worker.generation, WorkerState.READY)
        if worker.generation == generations.current:
            for _ in range(master.threads):
                master.free_slot(worker)
            return
        generations.on_ready(worker.generation)

    # ------------------------------------------------------------------ stop

    def retire(self, worker: Worker) -> None:
        """Tell ``worker`` to finish what it holds and exit."""
        if worker.state in (WorkerState.RETIRING, WorkerState.DEAD):
            return
        worker.state = WorkerState.RETIRING
        self.master.drop_pinned(worker)
        self.master.events.worker_state(worker.pid, worker.generation, WorkerState.RETIRING)
        worker.send(messages.Exit())
        self.master.loop.call_later(RETIRE_GRACE, self._retire_overdue, worker)

    def _retire_overdue(self, worker: Worker) -> None:
        if worker.state == WorkerState.RETIRING and not worker.flights:
            LOG.warning("retired worker pid %d did not exit; killing it", worker.pid)
            kill(worker)
        elif worker.state == WorkerState.RETIRING:  # still finishing a call: look again later
            self.master.loop.call_later(RETIRE_GRACE, self._retire_overdue, worker)

    def on_link_closed(self, worker: Worker) -> None:
        """The worker exited, crashed or was killed: its link is gone."""
        master = self.master
        was = worker.state
        worker.state = WorkerState.DEAD
        master.drop_pinned(worker)
        if worker.start_timer is not None:
            worker.start_timer.cancel()
        if worker in master.workers:
            master.workers.remove(worker)
        flights, worker.flights = worker.flights, {}
        stopping = master.stopping
        killed = worker.killed
        if was == WorkerState.STARTING and killed in (None, KillReason.START_TIMEOUT) and not stopping:
            self._boot_ended(worker)
            return
        crashed = killed is None and (flights or was != WorkerState.RETIRING)
        if crashed:  # its calls are answered once its exit status is known
            self.in_background(self._collect_exit, worker, flights)
        else:  # killed by us (its calls are answered already) or a normal exit after Exit
            self.reap_later(worker)
            if flights:
                master.answer_all(flights, "shutdown")
        if stopping:
            master.check_drained()
            return
        if not master.generations.wanted(worker.generation) or killed in (KillReason.OBSOLETE,
                                                                           KillReason.SHUTDOWN):
            return
        if crashed or killed in (KillReason.TIMEOUT, KillReason.CRASH):
            self.spawn(worker.generation, RestartReason(killed) if killed else RestartReason.CRASH)

    # ------------------------------------------------------------------ failed boots

    def _boot_ended(self, worker: Worker) -> None:
        """A worker's link closed before it was ready: why (its Failed message, a start timeout,
        else its exit status, which a spawner thread waits for), then :meth:`_boot_failed`."""
        if worker.failed is not None:
            self.reap_later(worker)
            self._boot_failed(worker, worker.failed.cause, worker.failed.detail)
        elif worker.killed == KillReason.START_TIMEOUT:
            self.reap_later(worker)
            self._boot_failed(worker, f"a worker was not ready within {WORKER_START_TIMEOUT:g} s", "")
        else:
            def collect() -> None:
                code = _exit_status(worker)
                cause = f"a worker exited while starting ({describe_exit(code)})"
                self._to_loop(self._boot_exited, worker, cause)

            self.in_background(collect)

    def _boot_exited(self, worker: Worker, cause: str) -> None:
        self.master.events.worker_state(worker.pid, worker.generation, "exited")
        self._boot_failed(worker, cause, "")

    def _boot_failed(self, worker: Worker, cause: str, detail: str) -> None:
        """A worker of ``worker.generation`` could not boot: try again after a back-off; after
        MAX_BOOT_FAILURES in a row, a generation not yet serving is given up (the first one: the
        server exits; a reload's: the running one keeps serving and the reload says why)."""
        generations = self.master.generations
        generation = worker.generation
        if not generations.wanted(generation) or generations.gave_up is not None:
            return
        generations.boot_failures[generation] += 1
        failures = generations.boot_failures[generation]
        serving = generation == generations.current
        if not serving and failures >= MAX_BOOT_FAILURES:
            ready = generations.members(generation, WorkerState.READY)
            if not ready:
                generations.give_up(generation, failures, cause, detail)
                return
            LOG.warning("only %d of %d workers of generation %d could boot; switching to them, the others "
                        "keep trying", len(ready), self.master.size, generation)
            generations.switch(generation)
            serving = True
        delay = min(BOOT_BACKOFF[0] * 2 ** (failures - 1), BOOT_BACKOFF[1])
        LOG.log(logging.ERROR if serving else logging.WARNING,
                "worker pid %d failed to boot (%d in a row): %s; next attempt in %g s", worker.pid, failures,
                cause, delay)
        self.spawn(generation, None, delay)

    # ------------------------------------------------------------------ crashes and reaping

    def _collect_exit(self, worker: Worker, flights: dict[int, Flight]) -> None:
        """Spawner thread: wait for a dead worker's status, then answer its calls with it."""
        status = describe_exit(_exit_status(worker))
        self._to_loop(self._crashed, worker, flights, status)

    def _crashed(self, worker: Worker, flights: dict[int, Flight], status: str) -> None:
        self.master.events.worker_state(worker.pid, worker.generation, "exited")
        if not flights:
            LOG.error("idle worker pid %d died (%s); replacing it", worker.pid, status)
            return
        for flight in flights.values():
            LOG.error("worker pid %d died (%s) while running %s; replacing it", worker.pid, status,
                      flight.method or "a call")
            self.master.answer(flight, lambda method: WorkerCrashed(
                f"the worker running {method} died ({status})", {"exit": status}), "crash")

    def reap_later(self, worker: Worker) -> None:
        process = worker.process
        if process is None:
            return

        def reap() -> None:
            try:
                process.wait(RETIRE_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self._to_loop(self.master.events.worker_state, worker.pid, worker.generation, "exited")

        self.in_background(reap)

    def in_background(self, fn: Callable[..., None], *args: Any) -> None:
        """Run blocking ``fn`` on a spawner thread (a thread of its own once the pool is shut)."""
        try:
            self.spawner.submit(fn, *args)
        except RuntimeError:
            threading.Thread(target=fn, args=args, daemon=True).start()

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.master.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the relay loop is closed: the master is exiting
            pass


def _exit_status(worker: Worker) -> int | None:
    """A dead worker's exit status (None when it does not come within EXIT_STATUS_WAIT)."""
    code = None
    if worker.process is not None:
        try:
            code = worker.process.wait(EXIT_STATUS_WAIT)
        except subprocess.TimeoutExpired:
            kill(worker)
    return code
