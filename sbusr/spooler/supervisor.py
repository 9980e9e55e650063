"""The spooler side of sbusr-server: owns the job directory and runs the spooler processes.

One server at a time owns a directory (an ``flock`` on ``lock``, released by the kernel even on
kill -9): a hot standby with the same config waits for it instead of running the same jobs. On
taking it, jobs left in ``running/`` by a server that died go back to the queue. Each spooler
process reports the job it starts; one that overruns its time limit is SIGKILLed (uWSGI's
harakiri) and its job moves to ``failed/``. The job of a process that died otherwise (kill -9,
a crash) goes back to the queue and runs again at once, as after a kill of the whole server: at
least once, up to ``max_retries`` times. Either way the process is replaced and counted as killed.
Stopping: SIGTERM lets each process finish its job for up to the graceful timeout; a job
still running then stays in ``running/`` and runs again at the next start.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from sbusr.execution.exits import describe_exit
from sbusr.spooler.jobs import DIRECTORY_ENV, JobStore
from sbusr.spooler.runner import PARENT_ENV, REPORT_FD_ENV, Outcome

LOG = logging.getLogger("sbusr.spooler")

#: seconds between attempts to take a directory another server holds
LOCK_RETRY = 1.0
#: a process that dies sooner than this after its start is restarted after a growing pause
QUICK_DEATH = 5.0


class _Child:
    """One spooler process and what it is running."""

    def __init__(self, index: int, generation: int) -> None:
        self.index = index
        self.generation = generation
        self.proc: subprocess.Popen[bytes] | None = None
        self.job: str | None = None
        self.label = ""
        self.deadline: float | None = None
        self.started = time.monotonic()
        self.retiring = False


class Spooler:
    """Start with :meth:`start`; :meth:`reload` replaces the processes (new code), :meth:`stop` ends."""

    def __init__(self, directory: str, processes: int, config_args: Sequence[str],
                 max_retries: int = 3) -> None:
        self.store = JobStore(directory)
        self.processes = processes
        self.max_retries = max_retries
        self.config_args = list(config_args)
        self._lock_file: Any = None
        self._cond = threading.Condition()
        self._stopping = False
        self._generation = 0
        self._children: set[_Child] = set()
        self._threads: list[threading.Thread] = []
        self.done = 0
        self.retried = 0
        self.failed = 0
        self.killed = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if not self._try_lock():
            LOG.info("spool directory %s is held by another sbusr-server; waiting for it",
                     self.store.directory)
            self._background(self._wait_for_lock)
            return
        self._begin()

    def _try_lock(self) -> bool:
        handle = open(os.path.join(self.store.directory, "lock"), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle
        return True

    def _wait_for_lock(self) -> None:
        while True:
            with self._cond:
                if self._cond.wait_for(lambda: self._stopping, LOCK_RETRY):
                    return
            if self._try_lock():
                LOG.info("took over spool directory %s", self.store.directory)
                self._begin()
                return

    def _begin(self) -> None:
        recovered = self.store.recover()
        if recovered:
            LOG.warning("%d spooled jobs were running when the last server stopped; they run again",
                        recovered)
        counts = self.store.counts()
        LOG.info("spooler: %d processes on %s (%d queued, %d failed)", self.processes, self.store.directory,
                 counts["queue"], counts["failed"])
        with self._cond:
            generation = self._generation
        for index in range(self.processes):
            self._background(self._keep_running, index, generation)

    def reload(self) -> None:
        """New processes (importing the endpoint code afresh) once each old one finishes its job."""
        with self._cond:
            if self._lock_file is None or self._stopping:
                return
            self._generation += 1
            generation = self._generation
            old = list(self._children)
        for child in old:
            self._retire(child)
        for index in range(self.processes):
            self._background(self._keep_running, index, generation)

    def halt(self) -> None:
        """Start stopping: no new processes; each one exits after its current job."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            children = list(self._children)
        for child in children:
            self._retire(child)

    def stop(self, timeout: float) -> None:
        """:meth:`halt`, then wait up to ``timeout`` for the processes; kill what still runs."""
        self.halt()
        with self._cond:
            children = list(self._children)
        deadline = time.monotonic() + timeout
        for child in children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                LOG.warning("spooler process %d still runs %s after %.1f s; killed (the job runs again at "
                            "the next start)", child.proc.pid, child.label, timeout)
                child.proc.kill()
        for thread in self._threads:
            thread.join(5.0)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _retire(self, child: _Child) -> None:
        child.retiring = True
        if child.proc is not None and child.proc.poll() is None:
            try:
                child.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _background(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="sbusr-spooler", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]  # reloads add threads: drop ended ones
        self._threads.append(thread)
        thread.start()

    # ------------------------------------------------------------------ one process slot

    def _keep_running(self, index: int, generation: int) -> None:
        """Run spooler process ``index`` of ``generation``, replacing it when it dies."""
        pause = 0.5
        while True:
            with self._cond:
                if self._stopping or generation != self._generation:
                    return
            child = _Child(index, generation)
            try:
                self._spawn_and_watch(child)
            except Exception:
                LOG.exception("spooler process %d could not be run", index)
            with self._cond:
                self._children.discard(child)
                if self._stopping or generation != self._generation:
                    return
            if time.monotonic() - child.started < QUICK_DEATH:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, pause)
                pause = min(pause * 2, 30.0)
            else:
                pause = 0.5

    def _spawn_and_watch(self, child: _Child) -> None:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, **{REPORT_FD_ENV: str(write_fd), PARENT_ENV: str(os.getpid()),
                                  DIRECTORY_ENV: self.store.directory})
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            child.proc = subprocess.Popen([sys.executable, "-m", "sbusr.cmd.spooler", *self.config_args],
                                          pass_fds=[write_fd], stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(write_fd)
        with self._cond:
            self._children.add(child)
            stopping = self._stopping
        if stopping:
            self._retire(child)
        with os.fdopen(read_fd, "rb") as pipe:
            self._watch(child, pipe)
        code = child.proc.wait()
        if child.job is not None and not (child.retiring and self._stopping):
            reason = f"spooler process {child.proc.pid} died ({describe_exit(code)}) while running it"
            self.killed += 1
            if self.store.requeue_running(child.job, reason, self.max_retries):
                self.retried += 1
                LOG.error("spooled job %s: %s; it runs again", child.label, reason)
            else:
                self.failed += 1
                LOG.error("spooled job %s: %s; moved to failed/ (no retries left)", child.label, reason)
        elif code not in (0, -signal.SIGTERM) and not child.retiring:
            LOG.error("spooler process %d exited (%s); starting another", child.proc.pid, describe_exit(code))

    def _watch(self, child: _Child, pipe: Any) -> None:
        """Read the child's reports until EOF; kill it when its job overruns."""
        assert child.proc is not None
        buffer = b""
        while True:
            wait = None if child.deadline is None else max(0.0, child.deadline - time.monotonic())
            ready, _, _ = select.select([pipe], [], [], wait)
            if not ready:
                self.killed += 1
                LOG.warning("spooled job %s exceeded its time limit; spooler process %d killed and replaced",
                            child.label, child.proc.pid)
                child.proc.kill()
                child.proc.wait()
                job, child.job = child.job, None
                if job is not None:
                    self.failed += 1
                    self.store.fail_running(job, "time limit exceeded")
                return
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._on_report(child, line)

    def _on_report(self, child: _Child, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if "start" in message:
            child.job = str(message["start"])
            child.label = str(message.get("label", child.job))
            timeout = float(message.get("timeout") or 0)
            child.deadline = time.monotonic() + timeout if timeout > 0 else None
        elif "end" in message:
            child.job, child.deadline = None, None
            outcome = message.get("outcome", Outcome.DONE)
            if outcome == Outcome.DONE:
                self.done += 1
            elif outcome == Outcome.RETRY:  # waiting in the queue again: not finished
                self.retried += 1
            elif outcome == Outcome.FAILED:
                self.failed += 1
        elif "ready" in message:
            LOG.debug("spooler process %s ready with tasks %s", message["ready"], message.get("tasks"))

    # ------------------------------------------------------------------ reporting

    def describe(self) -> dict[str, Any]:
        """What ``sys.spool`` answers."""
        counts = self.store.counts()
        with self._cond:
            pids = sorted(c.proc.pid for c in self._children if c.proc is not None and c.proc.poll() is None)
        return {"directory": self.store.directory, "active": self._lock_file is not None,
                "queued": counts["queue"], "running": counts["running"], "failed": counts["failed"],
                "finished": self.done, "retried": self.retried, "given_up": self.failed,
                "killed": self.killed, "processes": pids}
