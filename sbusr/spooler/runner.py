"""One spooler process: claim the first due job, run it, record the outcome; repeat.

Started by :mod:`sbusr.spooler.supervisor` as ``python -m sbusr.cmd.spooler`` with the server's
own config files, so it loads the same endpoint modules and runs ``worker_init`` like a worker.
It tells the supervisor on a pipe (JSON lines) which job it starts and with which time limit;
the supervisor kills it if the job overruns. SIGTERM: finish the current job, then exit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import traceback
from enum import StrEnum
from typing import Any

from oslo_config import cfg

from sbusr import dispatch
from sbusr.execution.limits import own_timeout
from sbusr.spooler.jobs import (
    DIRECTORY_ENV,
    Job,
    JobStore,
    SpoolRetry,
    configure,
    find_spool_functions,
    normalize_task,
)
from sbusr.util.procs import set_parent_death_signal

LOG = logging.getLogger("sbusr.spooler")

#: fd of the pipe to the supervisor, and the supervisor's pid (we exit when it is gone)
REPORT_FD_ENV = "SBUSR_SPOOLER_FD"
PARENT_ENV = "SBUSR_SPOOLER_PARENT"
#: seconds between looks at an empty (or not yet due) queue
POLL_INTERVAL = 0.5


class Outcome(StrEnum):
    """How one run of a job ended, as the runner reports it to the supervisor."""

    DONE = "done"  # it returned: the job is removed
    RETRY = "retry"  # it raised SpoolRetry: queued again for later
    FAILED = "failed"  # it raised, or ran out of retries: moved to failed/


class Runner:
    def __init__(self, store: JobStore, registry: dispatch.Registry, call_timeout: float, max_retries: int,
                 retry_delay: float, report: Any) -> None:
        self.store = store
        self.call_timeout = call_timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self._report = report
        self._stop = threading.Event()
        #: jobs whose function is not loaded in this process: left in the queue, not claimed again
        self._waiting: set[str] = set()
        self.tasks, clashes = find_spool_functions(registry.modules)
        for task, kept, obj in clashes:
            LOG.warning("two @spool functions are named %s (%s in %s and %s in %s); its jobs run "
                        "the first one: give one @spool(name=...)", task, kept.__qualname__,
                        kept.__module__, obj.__qualname__, obj.__module__)

    def stop(self) -> None:
        self._stop.set()

    def send(self, message: dict[str, Any]) -> None:
        try:
            self._report.write(json.dumps(message) + "\n")
            self._report.flush()
        except (OSError, ValueError):
            os._exit(1)  # the supervisor is gone

    def run_forever(self) -> None:
        self.send({"ready": os.getpid(), "tasks": sorted(self.tasks)})
        while not self._stop.is_set():
            job, due = self.store.claim(self._waiting)
            if job is None:
                wait = POLL_INTERVAL if due is None else min(POLL_INTERVAL, max(0.0, due - time.time()))
                self._stop.wait(wait)
                continue
            self.run(job)

    def run(self, job: Job) -> None:
        func = self.tasks.get(normalize_task(job.task))
        if func is None:
            self.wait_for_function(job)
            return
        own = own_timeout(func)
        timeout = self.call_timeout if own is None else own
        label = f"{func.__qualname__}[{job.id}]"
        self.send({"start": job.name, "timeout": timeout, "label": label})
        started = time.monotonic()
        kwargs = job.data.get("kwargs") or {}
        try:
            func(**kwargs)
        except (Exception, SystemExit) as exc:
            outcome = settle(self.store, job, label, exc, self.max_retries, self.retry_delay)
        else:
            LOG.info("spooled job %s done in %.2f s", label, time.monotonic() - started)
            outcome = settle(self.store, job, label, None, self.max_retries, self.retry_delay)
        self.send({"end": job.name, "outcome": outcome})

    def wait_for_function(self, job: Job) -> None:
        """No loaded function for the job's task: it stays queued (this process skips it from now on)
        until a reload brings the function back or an operator removes the file; one WARNING."""
        self._waiting.add(job.name)
        if job.data.get("waiting_for") == job.task:
            self.store.put_back(job)
            return
        LOG.warning("spooled job %s: no @spool function named %s in the loaded endpoints; it stays in "
                    "%s until the function is back (a reload) or it is removed", job.id, job.task,
                    os.path.join(self.store.directory, "queue", job.name))
        self.store.put_back(job, waiting_for=job.task)


def settle(store: JobStore, job: Job, label: str, error: BaseException | None, max_retries: int,
           retry_delay: float) -> Outcome:
    """Record how a run of ``job`` ended (``error`` None: it returned)."""
    if error is None:
        store.finish(job)
        return Outcome.DONE
    if isinstance(error, SpoolRetry):
        after = retry_delay if error.after is None else error.after
        if job.attempts >= max_retries:
            LOG.warning("spooled job %s asked for a retry after %d retries; moved to failed", label,
                        job.attempts)
            store.fail(job, f"gave up after {job.attempts} retries: {error}", "")
            return Outcome.FAILED
        LOG.info("spooled job %s will run again in %g s (retry %d of %d): %s", label, after,
                 job.attempts + 1, max_retries, error)
        store.retry(job, after, str(error))
        return Outcome.RETRY
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    LOG.error("spooled job %s failed; moved to failed/:\n%s", label, text.rstrip())
    store.fail(job, f"{type(error).__name__}: {error}", text)
    return Outcome.FAILED


def main(conf: cfg.ConfigOpts) -> int:
    """Entry point behind ``python -m sbusr.cmd.spooler`` (``conf`` already parsed)."""
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if parent:
        # SIGKILL, not SIGTERM: no job runs on without its server (kill -9 included)
        set_parent_death_signal(parent, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    report = os.fdopen(int(os.environ[REPORT_FD_ENV]), "w", encoding="utf-8")
    directory = os.environ.get(DIRECTORY_ENV) or conf.spooler.directory
    configure(directory)  # a job may spool further jobs
    registry = dispatch.load_endpoints(conf)
    from sbusr.execution.hooks import run_hook  # the same worker_init as RPC workers

    init_error = run_hook(conf.execution.worker_init)
    if init_error is not None:
        LOG.error("spooler process: worker_init failed (%s); jobs still run", init_error)
    runner = Runner(JobStore(directory), registry, conf.execution.call_timeout, conf.spooler.max_retries,
                    conf.spooler.retry_delay, report)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    runner.run_forever()
    return 0


