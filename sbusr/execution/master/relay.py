"""Process mode's master: owns the SmartBus link, relays request packets to worker processes.

The master is the only process registered on the bus under the server's identity; it does not run
the RPCServer. Each worker (:mod:`sbusr.execution.worker`) is a complete RPCServer whose smartbus
link is a socketpair to the master. The relay runs on one event loop (the native bus client's own,
so a packet goes from the bus to a worker and its reply back without a thread hop):

* a request packet goes, unchanged, to a worker of the current generation with a free slot
  (``[execution] threads`` per worker, default 1); if none is free it waits in the master's queue
  (``queue_size``), beyond that it is answered -32002 "server busy" at once;
* the worker's reply comes back inside its ``Done`` message and is relayed to the bus unchanged;
* ``sys.stats``, ``sys.timers``, ``sys.spool`` and ``sys.reload`` are answered by the master, where
  their state lives (:mod:`~sbusr.execution.master.system_calls`);
* the master parses a packet's JSON only to answer for a worker: time limit exceeded (the worker is
  SIGKILLed: -32001), worker died (-32003 with its exit status), shutting down (-32002); because
  it keeps every packet a worker holds until that worker says it is done, each request gets exactly
  one reply.

The workers' lives are :mod:`~sbusr.execution.master.workers`' and the reloads
:mod:`~sbusr.execution.master.generations`'; this module is the relay, its deadlines and the stop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import oslo_messaging
from oslo_config import cfg

from sbusr.execution import messages
from sbusr.execution.events import MasterEvents
from sbusr.execution.forkserver import ForkServer
from sbusr.execution.master.generations import RELOAD_TIMEOUT, Generations, Summary
from sbusr.execution.master.system_calls import SystemCalls
from sbusr.execution.master.workers import (
    WORKER_START_TIMEOUT,
    Flight,
    KillReason,
    RestartReason,
    Worker,
    WorkerPool,
    WorkerProcess,
    WorkerState,
    kill,
)
from sbusr.jsonrpc.errors import (
    CALL_TIMEOUT,
    INTERNAL_ERROR,
    SERVER_BUSY,
    CallTimeout,
    ServerBusy,
    WorkerCrashed,
)
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Packet
from sbusr.smartbus.interface import BusError
from sbusr.transport.connection import BusConnection
from sbusr.transport.replies import Phase as ReplyPhase
from sbusr.transport.replies import Replies
from sbusr.transport.url import client_config_from_url

LOG = logging.getLogger("sbusr.execution")

#: Seconds between checks of the calls' deadlines (the precision of time limits).
DEADLINE_TICK = 0.1
#: At most one "server busy" warning per this many seconds.
BUSY_LOG_INTERVAL = 5.0


class Phase(enum.Enum):
    """The master's own life: packets are answered "starting" until the first generation serves."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class Master:
    """The process-mode server (see the module docstring); ``sbusr-server`` drives it."""

    def __init__(self, conf: cfg.ConfigOpts, transport_url: str, worker_argv: Sequence[str],
                 events: MasterEvents | None = None, forks: ForkServer | None = None) -> None:
        group = conf.execution
        self.conf = conf
        self.size: int = group.workers
        self.threads: int = group.threads
        self.queue_size: int = group.queue_size
        self.max_tasks: int = group.max_tasks_per_child
        self.call_timeout: float = group.call_timeout
        self.events = events or MasterEvents()
        url = oslo_messaging.TransportURL.parse(conf, transport_url)
        config = client_config_from_url(conf, url)
        #: the replies the master writes itself (for a worker that cannot); services count them
        self.replies = Replies(conf, config.encoding, lambda: self.conn)
        self.conn = BusConnection.acquire(conf, config, self.replies.answer_idle, connect=False, wait=False)
        loop = self.conn.loop
        self._own_loop: threading.Thread | None = None
        if not isinstance(loop, asyncio.AbstractEventLoop):  # a backend without a loop (vendor)
            loop = asyncio.new_event_loop()
            self._own_loop = threading.Thread(target=loop.run_forever, name="sbusr-relay", daemon=True)
            self._own_loop.start()
        self.loop: asyncio.AbstractEventLoop = loop
        ident: concurrent.futures.Future[int] = concurrent.futures.Future()
        loop.call_soon_threadsafe(lambda: ident.set_result(threading.get_ident()))
        self._loop_thread = ident.result(10.0)
        # relay state: touched on the loop only
        self._phase = Phase.STARTING
        self.workers: list[Worker] = []
        self.pool = WorkerPool(self, worker_argv, forks)
        self.generations = Generations(self)
        self.system_calls = SystemCalls(self.conn.config.encoding, conf.smartbus.max_request_size,
                                        bool(getattr(conf, "debug", False) or conf.server.expose_tracebacks),
                                        conf.server.decimal_as)
        self._local_calls = 0  # sys.* calls the master answers itself, running now
        self._idle: collections.deque[Worker] = collections.deque()
        self._queue: collections.deque[tuple[Packet, float]] = collections.deque()
        self._busy_logged = 0.0
        self._outbox: list[bytes] = []
        self._own = (self.conn.config.unit_id, self.conn.config.client_id)
        #: the backend sends raw bytes: several frames may go in one write
        self._raw_ok = hasattr(self.conn.client, "send_raw")
        # shared with other threads
        self._drained = threading.Event()
        self._reload_lock = threading.Lock()

    # ------------------------------------------------------------------ public (any thread)

    def start(self) -> None:
        """Start the first generation; packets are taken (answered "starting") from now on."""
        self.conn.set_request_sink(self._sink)
        first: concurrent.futures.Future[Summary] = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self.generations.begin, first)
        self.loop.call_soon_threadsafe(self._check_deadlines)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the first generation serves; BootFailed when its workers cannot boot."""
        self.generations.settled.wait(timeout)
        if self.generations.gave_up is not None:
            raise self.generations.gave_up
        return self.generations.ready.is_set()

    def connect(self) -> None:
        """Register on the bus (and keep retrying in the background: a hot standby waits here)."""
        self.conn.connect(wait=False)

    @property
    def methods(self) -> list[str]:
        ready = self.generations.current_ready()
        return ready.methods if ready is not None else []

    @property
    def stopping(self) -> bool:
        return self._phase is Phase.STOPPING

    def reconfigure(self, conf: cfg.ConfigOpts) -> None:
        """After a config reload: the master's own mutable values (workers read the files anew)."""
        self.max_tasks = conf.execution.max_tasks_per_child
        self.call_timeout = conf.execution.call_timeout

    def reload(self) -> Summary:
        """Start a new generation, switch to it once ready; returns after the switch."""
        with self._reload_lock:
            fut: concurrent.futures.Future[Summary] = concurrent.futures.Future()
            self.loop.call_soon_threadsafe(self.generations.begin, fut)
            return fut.result(RELOAD_TIMEOUT + WORKER_START_TIMEOUT)

    def stop(self, timeout: float, answered: Callable[[], None] | None = None) -> bool:
        """Stop taking requests, let held calls finish for up to ``timeout``, release the bus link
        (then call ``answered``: the link closes once nobody else holds it) and stop the workers;
        True if nothing had to be cut short."""
        self.loop.call_soon_threadsafe(self._begin_stop)
        finished = self._drained.wait(timeout)
        if not finished:
            LOG.warning("calls still running after %.1f s; answering them 'shutting down'", timeout)
        done: concurrent.futures.Future[list[WorkerProcess]] = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self._abandon, done)
        pending = done.result(5.0)
        # every call is answered: the link may close (until then late requests got "shutting down")
        self.conn.release()
        if answered is not None:
            answered()
        deadline = time.monotonic() + 1.0
        for process in pending:
            try:
                process.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
        self.pool.spawner.shutdown(wait=False, cancel_futures=True)
        self.system_calls.shutdown()
        if self._own_loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._own_loop.join(2.0)
        return finished

    def stats(self) -> dict[str, Any]:
        """A snapshot for logs, sys.reload and a status page."""
        if self._on_loop():
            return self.snapshot()
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(lambda: fut.set_result(self.snapshot()))
        return fut.result(5.0)

    def pids(self) -> list[int]:
        return sorted(w.pid for w in list(self.workers) if w.pid and w.state != WorkerState.DEAD)

    def worker_sinks(self) -> list[Callable[[Packet], None]]:
        """One request sink per ready worker of the serving generation: a packet handed to one runs
        in that worker, once it has a free slot (before the shared queue). How a timer with
        ``target="workers"`` reaches every worker; a worker gone meanwhile answers -32002."""
        fut: concurrent.futures.Future[list[Worker]] = concurrent.futures.Future()

        def pick() -> None:
            fut.set_result(self.generations.members(self.generations.current, WorkerState.READY))

        if self._on_loop():
            pick()
        else:
            self.loop.call_soon_threadsafe(pick)
        return [self._sink_for(worker) for worker in fut.result(5.0)]

    def _sink_for(self, worker: Worker) -> Callable[[Packet], None]:
        def sink(packet: Packet) -> None:
            self.loop.call_soon_threadsafe(self._route_to, worker, packet)

        return sink

    # ------------------------------------------------------------ error replies for calls no worker answers

    def _reject(self, packet: Packet, code: int, message: str) -> None:
        """Answer every call in ``packet`` with one error."""
        self.replies.reject(packet, code, message)

    def _answer_for(self, packet: Packet, error_for: Callable[[str], BaseException]) -> None:
        """Answer every call in ``packet`` with ``error_for(its full method name)``."""
        self.replies.answer_for(packet, error_for)

    # ------------------------------------------------------------------ relay (loop)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _sink(self, packet: Packet) -> None:
        """The connection's request sink: on the bus thread, which is the relay loop's with the
        native client; other threads (the vendor library's, a timer's request_self) hop over."""
        if threading.get_ident() == self._loop_thread:
            self._route(packet)
        else:
            self.loop.call_soon_threadsafe(self._route, packet)

    def _route(self, packet: Packet) -> None:
        """A request packet from the bus."""
        phase = self._phase
        if phase is not Phase.RUNNING:
            starting = phase is Phase.STARTING
            self.events.refused("starting" if starting else "shutting down")
            self._reject(packet, SERVER_BUSY, "server is starting" if starting else "server is shutting down")
            return
        local = self.system_calls.calls_in(packet)
        if local is not None:
            self._answer_locally(packet, *local)
            return
        worker = self._take()
        if worker is not None:
            self._dispatch(worker, packet, 0.0)
        elif len(self._queue) < self.queue_size:
            self._queue.append((packet, time.monotonic()))
            self.events.queue_length(len(self._queue))
        else:
            now = time.monotonic()
            if now - self._busy_logged >= BUSY_LOG_INTERVAL:
                self._busy_logged = now
                LOG.warning("request from %s refused: all %d workers busy and %d requests queued",
                            packet.src, self.size, self.queue_size)
            self.events.refused("busy")
            self._reject(packet, SERVER_BUSY, "server busy, try again later")

    def _answer_locally(self, packet: Packet, batch: bool, calls: list[Any]) -> None:
        """``sys.*`` calls whose state lives here: the master answers them (on its sys pool)."""
        self._local_calls += 1

        def done(outcomes: list[messages.Outcome], seconds: float, caller: codec.Address) -> None:
            self.loop.call_soon_threadsafe(self._local_done, outcomes, seconds, caller)

        self.system_calls.answer(packet, batch, calls, self.conn.send_reply, done)

    def _local_done(self, outcomes: list[messages.Outcome], seconds: float, caller: codec.Address) -> None:
        self._local_calls -= 1
        self.events.call_done(os.getpid(), outcomes, seconds, caller)
        if self.stopping:
            self.check_drained()

    def _route_to(self, worker: Worker, packet: Packet) -> None:
        """A request packet for ``worker`` only (:meth:`worker_sinks`)."""
        if self._phase is not Phase.RUNNING or worker.state != WorkerState.READY or worker.killed is not None:
            reason = ("server is shutting down" if self.stopping
                      else f"worker pid {worker.pid} no longer serves")
            self._reject(packet, SERVER_BUSY, reason)
        elif len(worker.flights) < self.threads and not worker.pinned:
            self._dispatch(worker, packet, 0.0)
        else:
            worker.pinned.append((packet, time.monotonic()))

    def drop_pinned(self, worker: Worker) -> None:
        """``worker`` takes no more packets: answer those waiting for it alone."""
        pinned, worker.pinned = worker.pinned, collections.deque()
        for packet, _ in pinned:
            self._reject(packet, SERVER_BUSY, f"worker pid {worker.pid} no longer serves")

    def _take(self) -> Worker | None:
        idle = self._idle
        generation = self.generations.current
        while idle:
            worker = idle.popleft()
            if worker.state == WorkerState.READY and worker.generation == generation \
                    and len(worker.flights) < self.threads:
                return worker
        return None

    def _dispatch(self, worker: Worker, packet: Packet, queued_at: float) -> None:
        worker.sent += 1
        seq = worker.sent
        timeout = self.call_timeout
        now = time.monotonic()
        worker.flights[seq] = Flight(packet, queued_at or now, now, timeout)
        assert worker.transport is not None
        worker.transport.write(codec.frame_of(packet))
        self.events.call_dispatched(worker.pid, now - queued_at if queued_at else 0.0)

    def free_slot(self, worker: Worker) -> None:
        """``worker`` can take one more packet: the oldest queued one, else it waits in ``_idle``."""
        if worker.pinned:
            packet, queued_at = worker.pinned.popleft()
            self._dispatch(worker, packet, queued_at)
        elif self._queue:
            packet, queued_at = self._queue.popleft()
            self.events.queue_length(len(self._queue))
            self._dispatch(worker, packet, queued_at)
        else:
            self._idle.append(worker)

    def generation_switched(self, old: int, new: int) -> None:
        """Generation ``new`` takes packets from now on: retire ``old``, fill the new one's slots."""
        self._idle.clear()
        for worker in list(self.workers):
            if worker.generation == old:
                self.pool.retire(worker)
        if self._phase is Phase.STARTING:
            self._phase = Phase.RUNNING
        for worker in self.generations.members(new, WorkerState.READY):
            for _ in range(self.threads - len(worker.flights)):
                self.free_slot(worker)

    def on_data(self, worker: Worker, data: bytes) -> None:
        try:
            frames = worker.decoder.feed_frames(data)
        except codec.CodecError as exc:
            LOG.error("worker pid %d sent bad data (%s); killing it", worker.pid, exc)
            self.kill_worker(worker, KillReason.CRASH)
            return
        for raw, fields in frames:
            if worker.killed is not None:
                return
            if not messages.is_control(fields):
                self._forward(raw)  # something the worker sends to the bus on its own
                continue
            try:
                msg = messages.decode_frame(raw, fields)
            except messages.MessageError as exc:
                LOG.error("worker pid %d: %s; killing it", worker.pid, exc)
                self.kill_worker(worker, KillReason.CRASH)
                return
            if isinstance(msg, messages.Done):
                self._on_done(worker, msg)
            elif isinstance(msg, messages.Started):
                self._on_started(worker, msg)
            elif isinstance(msg, messages.Ready):
                self.pool.on_ready(worker, msg)
            elif isinstance(msg, messages.Failed):
                worker.failed = msg  # it exits now: the link's end reports the failed boot
            else:
                LOG.warning("unexpected message from worker pid %d: %r", worker.pid, msg)

    def _forward(self, raw: bytes) -> None:
        """Relay to the bus; the replies finished in one loop iteration go out in one write."""
        if codec.frame_dst(raw) == self._own:  # a reply to ourselves
            self.conn.forward(raw)  # (a timer tick, sbusr.transport.connection.BusConnection.request_self)
            return
        if not self._outbox:
            self.loop.call_soon(self._flush)
        self._outbox.append(raw)

    def _flush(self) -> None:
        chunks, self._outbox = self._outbox, []
        try:
            if self._raw_ok:
                self.conn.forward(b"".join(chunks))
            else:
                for raw in chunks:
                    self.conn.forward(raw)
        except (BusError, codec.CodecError) as exc:
            LOG.error("could not relay %d worker replies to the bus: %s", len(chunks), exc)

    def _on_done(self, worker: Worker, msg: messages.Done) -> None:
        flight = worker.flights.pop(msg.seq, None)
        if flight is None:
            LOG.error("worker pid %d reported packet %d done, which it does not hold", worker.pid, msg.seq)
            return
        if msg.reply:
            self._forward(msg.reply)
        worker.tasks += 1
        self.events.call_done(worker.pid, msg.outcomes, time.monotonic() - flight.arrived, flight.packet.src)
        if self.stopping:
            self.check_drained()
            return
        if worker.state != WorkerState.READY or worker.generation != self.generations.current:
            return  # retiring: it exits once its last call is done
        if self.max_tasks and worker.tasks >= self.max_tasks:
            LOG.info("worker pid %d ran %d calls; recycling it", worker.pid, worker.tasks)
            self.pool.retire(worker)
            self.pool.spawn(worker.generation, RestartReason.RECYCLE)
            return
        self.free_slot(worker)

    def _on_started(self, worker: Worker, msg: messages.Started) -> None:
        """A call's own limit: the packet's deadline becomes now + that limit (for a batch, each
        member that starts moves it; a member without a limit lifts it for the whole packet)."""
        flight = worker.flights.get(msg.seq)
        if flight is None:
            return
        flight.method = msg.method
        self.events.call_started(worker.pid, msg.method, msg.timeout)
        if flight.unlimited or msg.timeout <= 0:
            flight.unlimited = True
            flight.deadline = None
            return
        flight.timeout = msg.timeout
        flight.deadline = time.monotonic() + msg.timeout

    def _check_deadlines(self) -> None:
        """Every DEADLINE_TICK: kill the workers whose call overran (one scan of the held packets is
        cheaper than arming and cancelling a loop timer per call)."""
        if self.stopping and not any(w.flights for w in self.workers):
            return
        now = time.monotonic()
        for worker in list(self.workers):
            for seq, flight in list(worker.flights.items()):
                if flight.deadline is not None and flight.deadline <= now:
                    self._expire(worker, seq)
                    break
        self.loop.call_later(DEADLINE_TICK, self._check_deadlines)

    def _expire(self, worker: Worker, seq: int) -> None:
        flight = worker.flights.get(seq)
        if flight is None or worker.killed is not None:
            return
        limit = flight.timeout

        def timeout_error(method: str) -> BaseException:
            src = flight.packet.src
            LOG.warning("call %s from %s/%s exceeded its %g s limit: answered %d; worker pid %d killed and "
                        "replaced", method, src.unit, src.client, limit, CALL_TIMEOUT, worker.pid)
            return CallTimeout(f"{method} did not finish within {limit:g} s", {"timeout": limit})

        worker.flights.pop(seq)
        self.answer(flight, timeout_error, "timeout")
        self.kill_worker(worker, KillReason.TIMEOUT)

    def kill_worker(self, worker: Worker, reason: KillReason) -> None:
        """SIGKILL ``worker``; its other calls are answered as crashed; a replacement starts."""
        worker.killed = reason
        kill(worker)
        self.drop_pinned(worker)
        if worker.transport is not None:
            worker.transport.abort()
        flights, worker.flights = worker.flights, {}
        status = "killed by SIGKILL"
        for flight in flights.values():
            self.answer(flight, lambda method: WorkerCrashed(
                f"the worker running {method} was killed ({reason} of another call in it)",
                {"exit": status}), "crash")

    def answer(self, flight: Flight, error_for: Callable[[str], BaseException], reason: str) -> None:
        """Answer a worker's call for it (``reason``: "timeout", "crash" or "shutdown")."""
        flight.deadline = None

        def error(method: str) -> BaseException:
            exc = error_for(method)
            self.events.answered_for_worker(method, getattr(exc, "code", INTERNAL_ERROR), reason)
            return exc

        try:
            self._answer_for(flight.packet, error)
        except Exception:
            LOG.exception("could not answer a call on behalf of a worker")

    def answer_all(self, flights: dict[int, Flight], reason: str) -> None:
        for flight in flights.values():
            self.answer(flight, lambda _m: ServerBusy("server is shutting down"), reason)

    def snapshot(self) -> dict[str, Any]:
        """The workers' counts (on the loop)."""
        current = self.generations.members(self.generations.current)
        states = collections.Counter(w.state for w in current)
        held = sum(len(w.flights) for w in self.workers)
        return {"mode": "process", "generation": self.generations.current, "workers": self.size,
                "threads": self.threads, "ready": states.get(WorkerState.READY, 0),
                "idle": sum(1 for w in current if w.state == WorkerState.READY and not w.flights),
                "starting": states.get(WorkerState.STARTING, 0),
                "busy": sum(1 for w in self.workers if w.flights), "queued": len(self._queue),
                "in_flight": held + len(self._queue),
                "started": self.pool.started, "replaced": dict(self.pool.replaced)}

    # ------------------------------------------------------------------ stopping (loop)

    def _begin_stop(self) -> None:
        self._phase = Phase.STOPPING
        self.replies.phase = ReplyPhase.STOPPING
        queued, self._queue = self._queue, collections.deque()
        for packet, _ in queued:
            self.events.refused("shutting down")
            self._reject(packet, SERVER_BUSY, "server is shutting down")
        self.events.queue_length(0)
        self._idle.clear()
        self.generations.fail_waiters(ServerBusy("server is shutting down"))
        for worker in list(self.workers):
            self.pool.retire(worker)
        self.check_drained()
        self.generations.settled.set()  # a start-up waiting for the first workers gives up

    def check_drained(self) -> None:
        if not self._local_calls and not any(w.flights for w in self.workers):
            self._drained.set()

    def _abandon(self, done: concurrent.futures.Future[list[WorkerProcess]]) -> None:
        """After the graceful wait: cut the calls still running; the processes still to reap."""
        processes = []
        for worker in list(self.workers):
            if worker.flights:
                flights, worker.flights = worker.flights, {}
                worker.killed = KillReason.SHUTDOWN
                kill(worker)
                if worker.transport is not None:
                    worker.transport.abort()
                self.answer_all(flights, "shutdown")
            if worker.process is not None:
                processes.append(worker.process)
        done.set_result(processes)
