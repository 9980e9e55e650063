"""Process mode's master: owns the SmartBus link, relays request packets to worker processes.

The master is the only process registered on the bus under the server's identity; it does not run
the RPCServer. Each worker (:mod:`sbusr.execution.worker`) is a complete RPCServer whose smartbus
link is a socketpair to the master. The relay runs on one event loop (the native bus client's own,
so a packet goes from the bus to a worker and its reply back without a thread hop):

* a request packet goes, unchanged, to a worker of the current generation with a free slot
  (``[execution] threads`` per worker, default 1); if none is free it waits in the master's queue
  (``queue_size``), beyond that it is answered -32002 "server busy" at once;
* the worker's reply comes back inside its ``Done`` message and is relayed to the bus unchanged;
* the master parses a packet's JSON only to answer for a worker: time limit exceeded (the worker is
  SIGKILLed: -32001), worker died (-32003 with its exit status), shutting down (-32002); because
  it keeps every packet a worker holds until that worker says it is done, each request gets exactly
  one reply;
* supervision: a dead or killed worker is replaced, a worker is recycled after
  ``max_tasks_per_child`` packets, and a reload starts a whole new *generation* which takes new
  packets once it is ready while the old one finishes what it holds and exits.

Workers are fresh interpreters started with ``subprocess`` (fork+exec in C: no Python code runs in
the child before exec, so the multi-threaded master is never forked in the unsafe sense).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import oslo_messaging

from sbusr.driver_smartbus import SmartBusDriver
from sbusr.execution import messages
from sbusr.execution.events import MasterEvents
from sbusr.execution.exits import describe_exit
from sbusr.execution.hooks import BootFailed
from sbusr.jsonrpc.errors import (
    CALL_TIMEOUT,
    INTERNAL_ERROR,
    SERVER_BUSY,
    CallTimeout,
    RpcError,
    ServerBusy,
    WorkerCrashed,
)
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Packet
from sbusr.smartbus.interface import BusError

LOG = logging.getLogger("sbusr.execution")

#: Seconds a new worker may take to import, run worker_init and load endpoints before it is killed.
WORKER_START_TIMEOUT = 60.0
#: Seconds a reload waits for all of the new generation; it then switches to whatever is ready.
RELOAD_TIMEOUT = 60.0
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
#: Seconds between checks of the calls' deadlines (the precision of time limits).
DEADLINE_TICK = 0.1
#: At most one "server busy" warning per this many seconds.
BUSY_LOG_INTERVAL = 5.0


class _Flight:
    """A request packet a worker holds, until its ``Done``."""

    __slots__ = ("arrived", "deadline", "method", "packet", "sent", "timeout", "unlimited")

    def __init__(self, packet: Packet, arrived: float, sent: float, timeout: float) -> None:
        self.packet = packet
        self.arrived = arrived  # when the bus delivered it (before any wait in the queue)
        self.sent = sent
        self.timeout = timeout
        self.deadline = sent + timeout if timeout else None  # checked every DEADLINE_TICK
        self.method = ""
        self.unlimited = False


class _Worker:
    """One worker process as the relay sees it (touched on the relay loop only)."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.state = "starting"  # starting -> ready -> retiring; "dead" once the link closed
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.transport: asyncio.Transport | None = None
        self.decoder = codec.FrameDecoder()
        self.sent = 0  # data packets sent: the seq of the last one
        self.flights: dict[int, _Flight] = {}
        self.tasks = 0
        self.killed: str | None = None  # why the master killed it (its calls are answered already)
        self.start_timer: asyncio.TimerHandle | None = None
        self.ready: messages.Ready | None = None
        self.failed: messages.Failed | None = None  # why it cannot boot, as it said before exiting
        #: packets for this worker only (timer ticks with target="workers"), before the shared queue
        self.pinned: collections.deque[tuple[Packet, float]] = collections.deque()

    def __repr__(self) -> str:
        return f"<worker pid {self.pid} gen {self.generation} {self.state}>"


class _WorkerProtocol(asyncio.BufferedProtocol):
    """Reads into one preallocated buffer: a plain Protocol's recv allocates 256 KiB per read."""

    BUFFER_SIZE = 64 * 1024

    def __init__(self, master: Master, worker: _Worker) -> None:
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
        self.master._on_data(self.worker, bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.master._on_link_closed(self.worker)


def _kill(worker: _Worker) -> None:
    if worker.popen is not None and worker.popen.poll() is None:
        try:
            os.kill(worker.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Master:
    """The process-mode server (see the module docstring); ``sbusr-server`` drives it."""

    def __init__(self, conf: Any, transport_url: str, worker_argv: Sequence[str],
                 events: MasterEvents | None = None) -> None:
        group = conf.execution
        self.conf = conf
        self.size = group.workers
        self.threads = group.threads
        self.queue_size = group.queue_size
        self.max_tasks = group.max_tasks_per_child
        self.call_timeout = group.call_timeout
        self.events = events or MasterEvents()
        self._worker_argv = list(worker_argv)
        url = oslo_messaging.TransportURL.parse(conf, transport_url)
        self._transport_url = transport_url
        self.driver = SmartBusDriver(conf, url)
        self.conn = self.driver.open_connection(connect=False)
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
        self._spawner = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, min(self.size, 8)),
                                                              thread_name_prefix="sbusr-spawn")
        # relay state: touched on the loop only
        self._state = "starting"  # starting -> running -> stopping
        self._generation = 0  # the generation taking new packets (0: none yet)
        self._staged: int | None = None  # a generation starting up for a reload
        self._next_generation = 1
        self._workers: list[_Worker] = []
        self._idle: collections.deque[_Worker] = collections.deque()
        self._queue: collections.deque[tuple[Packet, float]] = collections.deque()
        self._reload_waiters: list[concurrent.futures.Future[dict[str, Any]]] = []
        self._boot_failures: collections.Counter[int] = collections.Counter()  # generation -> in a row
        self._gave_up: BootFailed | None = None
        self._busy_logged = 0.0
        self._outbox: list[bytes] = []
        self._own = (self.conn.config.unit_id, self.conn.config.client_id)
        #: the backend sends raw bytes: several frames may go in one write
        self._raw_ok = hasattr(self.conn.client, "send_raw")
        self.replaced: collections.Counter[str] = collections.Counter()
        self.started_workers = 0
        # shared with other threads
        self._ready = threading.Event()
        self._settled = threading.Event()  # the first generation serves, or the master gave up
        self._drained = threading.Event()
        self._reload_lock = threading.Lock()
        #: what a worker's sys.reload runs (sbusr-server's whole reload: timers too)
        self.reload_handler: Callable[[], dict[str, Any]] = self.reload

    # ------------------------------------------------------------------ public (any thread)

    def start(self) -> None:
        """Start the first generation; packets are taken (answered "starting") from now on."""
        self.conn.set_request_sink(self._sink)
        first: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self._begin_generation, first)
        self.loop.call_soon_threadsafe(self._check_deadlines)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the first generation serves; BootFailed when its workers cannot boot."""
        self._settled.wait(timeout)
        if self._gave_up is not None:
            raise self._gave_up
        return self._ready.is_set()

    def connect(self) -> None:
        """Register on the bus (and keep retrying in the background: a hot standby waits here)."""
        self.conn.connect(wait=False)

    @property
    def methods(self) -> list[str]:
        ready = self._current_ready()
        return ready.methods if ready is not None else []

    def reconfigure(self, conf: Any) -> None:
        """After a config reload: the master's own mutable values (workers read the files anew)."""
        self.max_tasks = conf.execution.max_tasks_per_child
        self.call_timeout = conf.execution.call_timeout

    def reload(self) -> dict[str, Any]:
        """Start a new generation, switch to it once ready; returns after the switch."""
        with self._reload_lock:
            fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
            self.loop.call_soon_threadsafe(self._begin_generation, fut)
            return fut.result(RELOAD_TIMEOUT + WORKER_START_TIMEOUT)

    def stop(self, timeout: float, answered: Callable[[], None] | None = None) -> bool:
        """Stop taking requests, let held calls finish for up to ``timeout``, release the bus link
        (then call ``answered``: the link closes once nobody else holds it) and stop the workers;
        True if nothing had to be cut short."""
        self.loop.call_soon_threadsafe(self._begin_stop)
        finished = self._drained.wait(timeout)
        if not finished:
            LOG.warning("calls still running after %.1f s; answering them 'shutting down'", timeout)
        done = concurrent.futures.Future()
        self.loop.call_soon_threadsafe(self._abandon, done)
        pending = done.result(5.0)
        # every call is answered: the link may close (until then late requests got "shutting down")
        self.driver.cleanup()
        if answered is not None:
            answered()
        deadline = time.monotonic() + 1.0
        for popen in pending:
            try:
                popen.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                popen.kill()
        self._spawner.shutdown(wait=False, cancel_futures=True)
        if self._own_loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._own_loop.join(2.0)
        return finished

    def stats(self) -> dict[str, Any]:
        """A snapshot for logs, sys.reload and a status page."""
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def snap() -> None:
            fut.set_result(self._stats())

        if self._on_loop():
            return self._stats()
        self.loop.call_soon_threadsafe(snap)
        return fut.result(5.0)

    def pids(self) -> list[int]:
        return sorted(w.pid for w in list(self._workers) if w.pid and w.state != "dead")

    def worker_sinks(self) -> list[Callable[[Packet], None]]:
        """One request sink per ready worker of the serving generation: a packet handed to one runs
        in that worker, once it has a free slot (before the shared queue). How a timer with
        ``target="workers"`` reaches every worker; a worker gone meanwhile answers -32002."""
        fut: concurrent.futures.Future[list[_Worker]] = concurrent.futures.Future()

        def pick() -> None:
            fut.set_result([w for w in self._workers
                            if w.generation == self._generation and w.state == "ready"])

        if self._on_loop():
            pick()
        else:
            self.loop.call_soon_threadsafe(pick)
        return [lambda packet, worker=worker: self.loop.call_soon_threadsafe(self._route_to, worker, packet)
                for worker in fut.result(5.0)]

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
        state = self._state
        if state != "running":
            reason = "server is starting" if state == "starting" else "server is shutting down"
            self.events.refused("starting" if state == "starting" else "shutting down")
            self.driver.reject(packet, SERVER_BUSY, reason)
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
            self.driver.reject(packet, SERVER_BUSY, "server busy, try again later")

    def _route_to(self, worker: _Worker, packet: Packet) -> None:
        """A request packet for ``worker`` only (:meth:`worker_sinks`)."""
        if self._state != "running" or worker.state != "ready" or worker.killed is not None:
            reason = "server is shutting down" if self._state == "stopping" else \
                f"worker pid {worker.pid} no longer serves"
            self.driver.reject(packet, SERVER_BUSY, reason)
        elif len(worker.flights) < self.threads and not worker.pinned:
            self._dispatch(worker, packet, 0.0)
        else:
            worker.pinned.append((packet, time.monotonic()))

    def _drop_pinned(self, worker: _Worker) -> None:
        """``worker`` takes no more packets: answer those waiting for it alone."""
        pinned, worker.pinned = worker.pinned, collections.deque()
        for packet, _ in pinned:
            self.driver.reject(packet, SERVER_BUSY, f"worker pid {worker.pid} no longer serves")

    def _take(self) -> _Worker | None:
        idle = self._idle
        generation = self._generation
        while idle:
            worker = idle.popleft()
            if worker.state == "ready" and worker.generation == generation \
                    and len(worker.flights) < self.threads:
                return worker
        return None

    def _dispatch(self, worker: _Worker, packet: Packet, queued_at: float) -> None:
        worker.sent += 1
        seq = worker.sent
        timeout = self.call_timeout
        now = time.monotonic()
        worker.flights[seq] = _Flight(packet, queued_at or now, now, timeout)
        assert worker.transport is not None
        worker.transport.write(codec.frame_of(packet))
        self.events.call_dispatched(worker.pid, now - queued_at if queued_at else 0.0)

    def _free_slot(self, worker: _Worker) -> None:
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

    def _on_data(self, worker: _Worker, data: bytes) -> None:
        try:
            frames = worker.decoder.feed_frames(data)
        except codec.CodecError as exc:
            LOG.error("worker pid %d sent bad data (%s); killing it", worker.pid, exc)
            self._kill_worker(worker, "crash")
            return
        for raw, fields in frames:
            if worker.killed is not None:
                return
            if not messages.is_control(fields):
                self._forward(raw)  # something the worker sends to the bus on its own
                continue
            try:
                msg = messages.decode(fields[1], raw[codec.HEADER_SIZE:codec.HEADER_SIZE + fields[10]])
            except messages.MessageError as exc:
                LOG.error("worker pid %d: %s; killing it", worker.pid, exc)
                self._kill_worker(worker, "crash")
                return
            if isinstance(msg, messages.Done):
                self._on_done(worker, msg)
            elif isinstance(msg, messages.Started):
                self._on_started(worker, msg)
            elif isinstance(msg, messages.Ready):
                self._on_ready(worker, msg)
            elif isinstance(msg, messages.Failed):
                worker.failed = msg  # it exits now: the link's end reports the failed boot
            elif isinstance(msg, messages.ReloadRequest):
                self._on_reload_request(worker, msg)
            elif isinstance(msg, messages.Query):
                self._on_query(worker, msg)
            else:
                LOG.warning("unexpected message from worker pid %d: %r", worker.pid, msg)

    def _forward(self, raw: bytes) -> None:
        """Relay to the bus; the replies finished in one loop iteration go out in one write."""
        if raw[8] == self._own[0] and raw[9] == self._own[1]:  # dst unit/client: a reply to ourselves
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

    def _on_done(self, worker: _Worker, msg: messages.Done) -> None:
        flight = worker.flights.pop(msg.seq, None)
        if flight is None:
            LOG.error("worker pid %d reported packet %d done, which it does not hold", worker.pid, msg.seq)
            return
        if msg.reply:
            self._forward(msg.reply)
        worker.tasks += 1
        self.events.call_done(worker.pid, msg.outcomes, time.monotonic() - flight.arrived, flight.packet.src)
        if self._state == "stopping":
            self._check_drained()
            return
        if worker.state != "ready" or worker.generation != self._generation:
            return  # retiring: it exits once its last call is done
        if self.max_tasks and worker.tasks >= self.max_tasks:
            LOG.info("worker pid %d ran %d calls; recycling it", worker.pid, worker.tasks)
            self._retire(worker)
            self._spawn(worker.generation, "recycle")
            return
        self._free_slot(worker)

    def _on_started(self, worker: _Worker, msg: messages.Started) -> None:
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
        if self._state == "stopping" and not any(w.flights for w in self._workers):
            return
        now = time.monotonic()
        for worker in list(self._workers):
            for seq, flight in list(worker.flights.items()):
                if flight.deadline is not None and flight.deadline <= now:
                    self._expire(worker, seq)
                    break
        self.loop.call_later(DEADLINE_TICK, self._check_deadlines)

    def _expire(self, worker: _Worker, seq: int) -> None:
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
        self._answer(flight, timeout_error, "timeout")
        self._kill_worker(worker, "timeout")

    def _kill_worker(self, worker: _Worker, reason: str) -> None:
        """SIGKILL ``worker``; its other calls are answered as crashed; a replacement starts."""
        worker.killed = reason
        _kill(worker)
        self._drop_pinned(worker)
        if worker.transport is not None:
            worker.transport.abort()
        flights, worker.flights = worker.flights, {}
        status = "killed by SIGKILL"
        for flight in flights.values():
            self._answer(flight, lambda method: WorkerCrashed(
                f"the worker running {method} was killed ({reason} of another call in it)",
                {"exit": status}), "crash")

    def _answer(self, flight: _Flight, error_for: Callable[[str], BaseException], reason: str) -> None:
        flight.deadline = None

        def error(method: str) -> BaseException:
            exc = error_for(method)
            self.events.answered_for_worker(method, getattr(exc, "code", INTERNAL_ERROR), reason)
            return exc

        try:
            self.driver.answer_for(flight.packet, error)
        except Exception:
            LOG.exception("could not answer a call on behalf of a worker")

    # ------------------------------------------------------------------ workers (loop)

    def _spawn(self, generation: int, reason: str | None, delay: float = 0.0) -> None:
        if reason is not None:
            self.replaced[reason] += 1
            self.events.worker_restart(reason)
        worker = _Worker(generation)
        self._workers.append(worker)
        if delay:
            self.loop.call_later(delay, self._launch_in_background, worker)
        else:
            self._launch_in_background(worker)

    def _launch_in_background(self, worker: _Worker) -> None:
        if not self._wanted(worker.generation):
            self._workers.remove(worker)
            return
        try:
            self._spawner.submit(self._launch, worker)
        except RuntimeError:  # shutting down
            self._workers.remove(worker)

    def _launch(self, worker: _Worker) -> None:
        """Spawner thread: start the process with one end of a socketpair."""
        ours, theirs = socket.socketpair()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "sbusr.cmd.worker", "--link-fd", str(theirs.fileno()),
                 *self._worker_argv],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        except Exception as exc:
            ours.close()
            self.loop.call_soon_threadsafe(self._launch_failed, worker, exc)
            return
        finally:
            theirs.close()  # else our copy would hide the worker's death (no EOF)
        self.loop.call_soon_threadsafe(self._attach, worker, popen, ours)

    def _launch_failed(self, worker: _Worker, exc: BaseException) -> None:
        self._workers.remove(worker)
        self._boot_failed(worker, f"could not start a worker process: {exc}", "")

    def _attach(self, worker: _Worker, popen: subprocess.Popen[bytes], sock: socket.socket) -> None:
        worker.popen = popen
        worker.pid = popen.pid
        self.started_workers += 1
        self.events.worker_state(worker.pid, worker.generation, "starting")
        if not self._wanted(worker.generation):
            worker.killed = "obsolete"
            _kill(worker)
            sock.close()
            self._workers.remove(worker)
            self._reap_later(worker)
            return
        sock.setblocking(False)
        self.loop.create_task(self.loop.connect_accepted_socket(
            lambda: _WorkerProtocol(self, worker), sock))
        worker.start_timer = self.loop.call_later(WORKER_START_TIMEOUT, self._start_timed_out, worker)

    def _start_timed_out(self, worker: _Worker) -> None:
        if worker.state == "starting":
            LOG.error("worker pid %d not ready within %g s; killing it", worker.pid, WORKER_START_TIMEOUT)
            self._kill_worker(worker, "start timeout")

    def _wanted(self, generation: int) -> bool:
        return self._state != "stopping" and generation in (self._generation, self._staged)

    def _on_ready(self, worker: _Worker, msg: messages.Ready) -> None:
        if worker.start_timer is not None:
            worker.start_timer.cancel()
            worker.start_timer = None
        worker.ready = msg
        self._boot_failures.pop(worker.generation, None)
        if not self._wanted(worker.generation):
            self._retire(worker)
            return
        worker.state = "ready"
        self.events.worker_state(worker.pid, worker.generation, "ready")
        if worker.generation == self._generation:
            for _ in range(self.threads):
                self._free_slot(worker)
            return
        staged = [w for w in self._workers if w.generation == worker.generation]
        if sum(1 for w in staged if w.state == "ready") >= self.size:
            self._switch(worker.generation)

    def _retire(self, worker: _Worker) -> None:
        """Tell ``worker`` to finish what it holds and exit."""
        if worker.state in ("retiring", "dead"):
            return
        worker.state = "retiring"
        self._drop_pinned(worker)
        self.events.worker_state(worker.pid, worker.generation, "retiring")
        if worker.transport is not None and not worker.transport.is_closing():
            worker.transport.write(messages.encode(messages.Exit()))
        self.loop.call_later(RETIRE_GRACE, self._retire_overdue, worker)

    def _retire_overdue(self, worker: _Worker) -> None:
        if worker.state == "retiring" and not worker.flights:
            LOG.warning("retired worker pid %d did not exit; killing it", worker.pid)
            _kill(worker)
        elif worker.state == "retiring":  # still finishing a call: look again later
            self.loop.call_later(RETIRE_GRACE, self._retire_overdue, worker)

    def _on_link_closed(self, worker: _Worker) -> None:
        """The worker exited, crashed or was killed: its link is gone."""
        was = worker.state
        worker.state = "dead"
        self._drop_pinned(worker)
        if worker.start_timer is not None:
            worker.start_timer.cancel()
        if worker in self._workers:
            self._workers.remove(worker)
        flights, worker.flights = worker.flights, {}
        stopping = self._state == "stopping"
        killed = worker.killed
        if was == "starting" and killed in (None, "start timeout") and not stopping:
            self._boot_ended(worker)
            return
        crashed = killed is None and (flights or was != "retiring")
        if crashed:  # its calls are answered once its exit status is known
            self._spawner_or_thread(self._collect_exit, worker, flights)
        else:  # killed by us (its calls are answered already) or a normal exit after Exit
            self._reap_later(worker)
            if flights:
                self._answer_all(flights, "shutdown")
        if stopping:
            self._check_drained()
            return
        if not self._wanted(worker.generation) or killed in ("obsolete", "shutdown"):
            return
        if crashed or killed in ("timeout", "crash"):
            self._spawn(worker.generation, killed or "crash")

    # ------------------------------------------------------------------ failed boots (loop)

    def _boot_ended(self, worker: _Worker) -> None:
        """A worker's link closed before it was ready: why (its Failed message, a start timeout,
        else its exit status, which a spawner thread waits for), then :meth:`_boot_failed`."""
        if worker.failed is not None:
            self._reap_later(worker)
            self._boot_failed(worker, worker.failed.cause, worker.failed.detail)
        elif worker.killed == "start timeout":
            self._reap_later(worker)
            self._boot_failed(worker, f"a worker was not ready within {WORKER_START_TIMEOUT:g} s", "")
        else:
            def collect() -> None:
                code = None
                if worker.popen is not None:
                    try:
                        code = worker.popen.wait(EXIT_STATUS_WAIT)
                    except subprocess.TimeoutExpired:
                        _kill(worker)
                cause = f"a worker exited while starting ({describe_exit(code)})"
                try:
                    self.loop.call_soon_threadsafe(self._boot_exited, worker, cause)
                except RuntimeError:  # the relay loop is closed: the master is exiting
                    pass

            self._spawner_or_thread(collect)

    def _boot_exited(self, worker: _Worker, cause: str) -> None:
        self.events.worker_state(worker.pid, worker.generation, "exited")
        self._boot_failed(worker, cause, "")

    def _boot_failed(self, worker: _Worker, cause: str, detail: str) -> None:
        """A worker of ``worker.generation`` could not boot: try again after a back-off; after
        MAX_BOOT_FAILURES in a row, a generation not yet serving is given up (the first one: the
        server exits; a reload's: the running one keeps serving and the reload says why)."""
        generation = worker.generation
        if not self._wanted(generation) or self._gave_up is not None:
            return
        self._boot_failures[generation] += 1
        failures = self._boot_failures[generation]
        serving = generation == self._generation
        if not serving and failures >= MAX_BOOT_FAILURES:
            ready = [w for w in self._workers if w.generation == generation and w.state == "ready"]
            if not ready:
                self._give_up(generation, failures, cause, detail)
                return
            LOG.warning("only %d of %d workers of generation %d could boot; switching to them, the others "
                        "keep trying", len(ready), self.size, generation)
            self._switch(generation)
            serving = True
        delay = min(BOOT_BACKOFF[0] * 2 ** (failures - 1), BOOT_BACKOFF[1])
        LOG.log(logging.ERROR if serving else logging.WARNING,
                "worker pid %d failed to boot (%d in a row): %s; next attempt in %g s", worker.pid, failures,
                cause, delay)
        self._spawn(generation, None, delay)

    def _give_up(self, generation: int, failures: int, cause: str, detail: str) -> None:
        """No worker of a starting generation could boot MAX_BOOT_FAILURES times in a row."""
        self._staged = None
        self._boot_failures.pop(generation, None)
        for other in [w for w in self._workers if w.generation == generation]:
            self._kill_worker(other, "obsolete")
        if self._generation:  # the reload's caller says it (sbusr-server: one ERROR line)
            error = BootFailed(f"new workers failed to boot {failures} times: {cause}", detail)
        else:
            error = BootFailed(f"{cause} ({failures} attempts)", detail)
            self._gave_up = error
            self._settled.set()
        waiters, self._reload_waiters = self._reload_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(error)

    def _answer_all(self, flights: dict[int, _Flight], reason: str) -> None:
        for flight in flights.values():
            self._answer(flight, lambda _m: ServerBusy("server is shutting down"), reason)

    def _spawner_or_thread(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._spawner.submit(fn, *args)
        except RuntimeError:
            threading.Thread(target=fn, args=args, daemon=True).start()

    def _collect_exit(self, worker: _Worker, flights: dict[int, _Flight]) -> None:
        """Spawner thread: wait for a dead worker's status, then answer its calls with it."""
        code = None
        if worker.popen is not None:
            try:
                code = worker.popen.wait(EXIT_STATUS_WAIT)
            except subprocess.TimeoutExpired:
                _kill(worker)
        status = describe_exit(code)
        try:
            self.loop.call_soon_threadsafe(self._crashed, worker, flights, status)
        except RuntimeError:  # the relay loop is closed: the master is exiting
            pass

    def _crashed(self, worker: _Worker, flights: dict[int, _Flight], status: str) -> None:
        self.events.worker_state(worker.pid, worker.generation, "exited")
        if not flights:
            LOG.error("idle worker pid %d died (%s); replacing it", worker.pid, status)
            return
        for flight in flights.values():
            LOG.error("worker pid %d died (%s) while running %s; replacing it", worker.pid, status,
                      flight.method or "a call")
            self._answer(flight, lambda method: WorkerCrashed(
                f"the worker running {method} died ({status})", {"exit": status}), "crash")

    def _reap_later(self, worker: _Worker) -> None:
        popen = worker.popen
        if popen is None:
            return

        def reap() -> None:
            try:
                popen.wait(RETIRE_GRACE)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
            try:
                self.loop.call_soon_threadsafe(self.events.worker_state, worker.pid, worker.generation,
                                               "exited")
            except RuntimeError:  # the relay loop is closed: the master is exiting
                pass

        self._spawner_or_thread(reap)

    # ------------------------------------------------------------------ generations (loop)

    def _begin_generation(self, fut: concurrent.futures.Future[dict[str, Any]]) -> None:
        if self._state == "stopping":
            fut.set_exception(ServerBusy("server is shutting down"))
            return
        if self._staged is not None:  # a reload is already starting workers: it serves this one too
            self._reload_waiters.append(fut)
            return
        generation = self._next_generation
        self._next_generation += 1
        self._staged = generation
        self._reload_waiters.append(fut)
        reason = "reload" if self._generation else None
        if reason:
            LOG.info("reload: starting %d workers of generation %d", self.size, generation)
        for _ in range(self.size):
            self._spawn(generation, reason)
        self.loop.call_later(RELOAD_TIMEOUT, self._stage_timed_out, generation)

    def _stage_timed_out(self, generation: int) -> None:
        if self._staged != generation:
            return
        ready = [w for w in self._workers if w.generation == generation and w.state == "ready"]
        if ready:
            LOG.warning("only %d of %d workers of generation %d ready after %g s; switching anyway",
                        len(ready), self.size, generation, RELOAD_TIMEOUT)
            self._switch(generation)
        elif self._generation:
            LOG.error("no worker of generation %d ready after %g s; the previous code stays in service",
                      generation, RELOAD_TIMEOUT)
            self._staged = None
            for worker in [w for w in self._workers if w.generation == generation]:
                self._kill_worker(worker, "obsolete")
            waiters, self._reload_waiters = self._reload_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(RuntimeError("no new worker became ready; reload abandoned"))
        else:  # the first generation: keep trying, requests are answered "starting" meanwhile
            LOG.error("no worker ready after %g s; still trying", RELOAD_TIMEOUT)
            self.loop.call_later(RELOAD_TIMEOUT, self._stage_timed_out, generation)

    def _switch(self, generation: int) -> None:
        old = self._generation
        self._generation = generation
        self._staged = None
        self._idle.clear()
        for worker in list(self._workers):
            if worker.generation == old:
                self._retire(worker)
        if self._state == "starting":
            self._state = "running"
        for worker in self._workers:
            if worker.generation == generation and worker.state == "ready":
                for _ in range(self.threads - len(worker.flights)):
                    self._free_slot(worker)
        if old:
            LOG.info("reload: generation %d serves; generation %d finishes its calls and exits",
                     generation, old)
        self._ready.set()
        self._settled.set()
        summary = self._summary()
        waiters, self._reload_waiters = self._reload_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(summary)

    def _current_ready(self) -> messages.Ready | None:
        for worker in list(self._workers):
            if worker.generation == self._generation and worker.ready is not None:
                return worker.ready
        return None

    def _summary(self) -> dict[str, Any]:
        ready = self._current_ready()
        return {"methods": ready.methods if ready else [], "duplicates": ready.duplicates if ready else [],
                "workers": self._stats()}

    def _stats(self) -> dict[str, Any]:
        current = [w for w in self._workers if w.generation == self._generation]
        states = collections.Counter(w.state for w in current)
        held = sum(len(w.flights) for w in self._workers)
        return {"mode": "process", "generation": self._generation, "workers": self.size,
                "threads": self.threads, "ready": states.get("ready", 0),
                "idle": sum(1 for w in current if w.state == "ready" and not w.flights),
                "starting": states.get("starting", 0),
                "busy": sum(1 for w in self._workers if w.flights), "queued": len(self._queue),
                "in_flight": held + len(self._queue),
                "started": self.started_workers, "replaced": dict(self.replaced)}

    def _on_reload_request(self, worker: _Worker, msg: messages.ReloadRequest) -> None:
        """``sys.reload`` ran in ``worker``: reload (blocking, so in a thread), then tell it."""
        def run() -> None:
            try:
                result = messages.ReloadResult(msg.token, summary=self.reload_handler())
            except RpcError as exc:  # a refusal that says why (a bad configuration): as thread mode
                result = messages.ReloadResult(msg.token, error=exc.message)
            except Exception as exc:
                result = messages.ReloadResult(msg.token, error=f"reload failed: {exc}")
            self.loop.call_soon_threadsafe(self._send_control, worker, result)

        threading.Thread(target=run, name="sbusr-reload", daemon=True).start()

    def _on_query(self, worker: _Worker, msg: messages.Query) -> None:
        """``sys.timers``/``sys.spool`` ran in ``worker``: the report of this process's state."""
        from sbusr.endpoints import system

        def run() -> None:
            try:
                result = messages.QueryResult(msg.token, value=system.report(msg.name))
            except Exception as exc:
                result = messages.QueryResult(msg.token, error=str(getattr(exc, "message", exc)))
            self.loop.call_soon_threadsafe(self._send_control, worker, result)

        threading.Thread(target=run, name="sbusr-query", daemon=True).start()

    def _send_control(self, worker: _Worker, msg: messages.Message) -> None:
        if worker.transport is not None and not worker.transport.is_closing():
            worker.transport.write(messages.encode(msg))

    # ------------------------------------------------------------------ stopping (loop)

    def _begin_stop(self) -> None:
        self._state = "stopping"
        self.driver.phase = "stopping"
        queued, self._queue = self._queue, collections.deque()
        for packet, _ in queued:
            self.events.refused("shutting down")
            self.driver.reject(packet, SERVER_BUSY, "server is shutting down")
        self.events.queue_length(0)
        self._idle.clear()
        waiters, self._reload_waiters = self._reload_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(ServerBusy("server is shutting down"))
        for worker in list(self._workers):
            self._retire(worker)
        self._check_drained()
        self._settled.set()  # a start-up waiting for the first workers gives up

    def _check_drained(self) -> None:
        if not any(w.flights for w in self._workers):
            self._drained.set()

    def _abandon(self, done: concurrent.futures.Future[list[subprocess.Popen[bytes]]]) -> None:
        """After the graceful wait: cut the calls still running; the processes still to reap."""
        popens = []
        for worker in list(self._workers):
            if worker.flights:
                flights, worker.flights = worker.flights, {}
                worker.killed = "shutdown"
                _kill(worker)
                if worker.transport is not None:
                    worker.transport.abort()
                self._answer_all(flights, "shutdown")
            if worker.popen is not None:
                popens.append(worker.popen)
        done.set_result(popens)
