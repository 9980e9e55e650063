"""``@spool`` and the job directory: one JSON file per job, moved between folders by atomic renames.

Layout of ``[spooler] directory`` (the uWSGI spooler's idea: plain files an operator can ``ls``)::

    tmp/      a job being written (never read)
    queue/    <not-before ns>-<created ns>-<id>.json   sorted by name = run order
    running/  the same file, renamed here by the spooler process that claimed it
    failed/   <id>.json: the job plus "error" and "traceback"; stays until someone removes it
    lock      held (flock) by the sbusr-server whose spooler processes run the jobs

A job is durable once ``.spool()`` returns: written to ``tmp/``, fsynced, renamed into ``queue/``,
directory fsynced. A rename is atomic, so two spooler processes never claim the same job. A job
left in ``running/`` by a server that was killed is put back in ``queue/`` at the next start: jobs
run at least once, and a job interrupted by a crash runs again from its start.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SPOOL_ATTR = "__sbusr_spool__"
#: where ``.spool()`` stores jobs when :func:`configure` was not called (sbusr-server sets it for
#: itself and its children)
DIRECTORY_ENV = "SBUSR_SPOOL_DIR"

_FOLDERS = ("tmp", "queue", "running", "failed")
_configured: str | None = None


class SpoolRetry(Exception):
    """Raise in a ``@spool`` function to run the job again ``after`` seconds later.

    After ``[spooler] max_retries`` retries the job moves to the failed area instead.
    ``after=None`` uses ``[spooler] retry_delay``.
    """

    def __init__(self, after: float | None = None, reason: str = "") -> None:
        if after is not None and (isinstance(after, bool) or not isinstance(after, (int, float))
                                  or after < 0):
            raise ValueError(f"after must be a number of seconds >= 0, got {after!r}")
        super().__init__(reason or "retry requested")
        self.after = None if after is None else float(after)
        self.reason = reason


def configure(directory: str | None) -> None:
    """Make ``.spool()`` in this process store jobs in ``directory`` (None: back to the environment)."""
    global _configured
    _configured = directory


def configured() -> str | None:
    """The directory :func:`configure` set in this process (None: the environment's)."""
    return _configured


def current_directory() -> str:
    directory = _configured or os.environ.get(DIRECTORY_ENV)
    if not directory:
        raise RuntimeError("no spooler directory: set [spooler] directory in the sbusr-server config")
    return directory


#: the module name sbusr's loader gives an endpoint file (``sbusr.dispatch.loading``): the folder's
#: hash, then the file's stem
_FILE_MODULE = re.compile(r"sbusr_ep_[0-9a-f]{10}_(\w+)")


def module_label(module_name: str) -> str:
    """The name a module goes by in job names: an endpoint file's stem, else the module's name."""
    match = _FILE_MODULE.fullmatch(module_name)
    return match.group(1) if match else module_name


def task_name(func: Callable[..., Any]) -> str:
    """``module.function``: the same wherever the endpoint folder is deployed, release after release."""
    return f"{module_label(func.__module__)}.{func.__qualname__}"


def normalize_task(task: str) -> str:
    """A job's task as a name of today: jobs stored by older releases say ``module:function``, with
    an endpoint file's module named after its folder's hash (``sbusr_ep_<hash>_sms:deliver``)."""
    module, sep, function = task.rpartition(":")
    if not sep:
        return task
    return f"{module_label(module)}.{function}"


def spool(func: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Give a module-level function ``.spool(**kwargs)``: store a job that calls it later.

    ``func.spool(phone="1380000", text="hi")`` returns the job id once the job is on disk; a spooler
    process then calls ``func(phone="1380000", text="hi")``. The arguments must be JSON values.
    Calling ``func(...)`` directly still runs it at once (handy in tests).

    A job names its function ``module.function`` (``sms.deliver`` for ``deliver`` in ``sms.py``),
    which does not change when the folder moves; ``@spool(name="sms.deliver")`` sets the name
    explicitly, so a function can be renamed or moved to another module and keep its queued jobs.
    """
    if name is not None and (not isinstance(name, str) or not name.strip() or ":" in name):
        raise ValueError(f"@spool(name=...) must be a non-empty name without ':', got {name!r}")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isfunction(func) or "." in func.__qualname__ or "<" in func.__qualname__:
            raise TypeError("@spool goes on module-level functions")
        task = name.strip() if name is not None else task_name(func)
        signature = inspect.signature(func)

        def enqueue(**kwargs: Any) -> str:
            try:
                signature.bind(**kwargs)
            except TypeError as exc:
                raise TypeError(f"{func.__qualname__}.spool(): {exc}") from None
            return JobStore(current_directory()).enqueue(task, kwargs)

        enqueue.__doc__ = f"Store a job that runs {func.__qualname__}(**kwargs); returns its id."
        func.spool = enqueue  # type: ignore[attr-defined]
        setattr(func, SPOOL_ATTR, task)
        return func

    return decorate if func is None else decorate(func)


def find_spool_functions(modules: Any) -> tuple[dict[str, Callable[..., Any]], list[tuple[str, Any, Any]]]:
    """The ``@spool`` functions defined in the given (kind, source, module) triples, by job name,
    and the clashes (name, kept, ignored) of two functions with one name."""
    found: dict[str, Callable[..., Any]] = {}
    clashes: list[tuple[str, Any, Any]] = []
    for _kind, _source, module in modules:
        for obj in vars(module).values():
            task = getattr(obj, SPOOL_ATTR, None)
            if not isinstance(task, str) or getattr(obj, "__module__", None) != module.__name__:
                continue  # imported from elsewhere: found in its own module
            kept = found.setdefault(task, obj)
            if kept is not obj:
                clashes.append((task, kept, obj))
    return found, clashes


@dataclass(frozen=True)
class Job:
    name: str  # file name in queue/ or running/
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.data.get("id", self.name))

    @property
    def task(self) -> str:
        return str(self.data.get("task", ""))

    @property
    def attempts(self) -> int:
        return int(self.data.get("attempts", 0))


def _name(not_before: float, created_ns: int, job_id: str) -> str:
    return f"{int(not_before * 1e9):020d}-{created_ns:020d}-{job_id}.json"


def _not_before(name: str) -> float:
    try:
        return int(name.split("-", 1)[0]) / 1e9
    except ValueError:
        return 0.0


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JobStore:
    """The job directory; every method is safe to call from several processes at once."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        for folder in _FOLDERS:
            os.makedirs(os.path.join(self.directory, folder), exist_ok=True)

    def _path(self, folder: str, name: str = "") -> str:
        return os.path.join(self.directory, folder, name)

    def _write(self, folder: str, name: str, data: dict[str, Any]) -> None:
        """Durably place ``data`` as ``folder/name`` (tmp file, fsync, rename, fsync the folder)."""
        tmp = self._path("tmp", f"{uuid.uuid4().hex}.json")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path(folder, name))
        _fsync_dir(self._path(folder))

    # ------------------------------------------------------------------ producing

    def enqueue(self, task: str, kwargs: dict[str, Any], after: float = 0.0) -> str:
        job_id = uuid.uuid4().hex
        data = {"id": job_id, "task": task, "kwargs": kwargs, "attempts": 0, "created": time.time()}
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"spool arguments must be JSON values: {exc}") from None
        self._write("queue", _name(time.time() + after, time.time_ns(), job_id), data)
        return job_id

    # ------------------------------------------------------------------ consuming (spooler processes)

    def claim(self, skip: frozenset[str] | set[str] = frozenset()) -> tuple[Job | None, float | None]:
        """Take the first due job (moved to running/), or (None, when the next one is due).

        Jobs whose file name is in ``skip`` are left alone (those this process cannot run).
        """
        for name in sorted(os.listdir(self._path("queue"))):
            if not name.endswith(".json") or name in skip:
                continue
            due = _not_before(name)
            if due > time.time():
                return None, due
            try:
                os.rename(self._path("queue", name), self._path("running", name))
            except FileNotFoundError:
                continue  # another spooler process took it
            try:
                with open(self._path("running", name), encoding="utf-8") as fh:
                    data = json.load(fh)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                self.fail(Job(name, {"id": name}), f"unreadable job file: {exc}", "")
                continue
            return Job(name, data), None
        return None, None

    def take(self, job_id: str | None = None) -> Job | None:
        """The first queued job (or the one with ``job_id``), due or not, moved to running/ (tests)."""
        for name in sorted(os.listdir(self._path("queue"))):
            if not name.endswith(".json") or (job_id is not None and not name.endswith(f"-{job_id}.json")):
                continue
            try:
                os.rename(self._path("queue", name), self._path("running", name))
            except FileNotFoundError:
                continue
            with open(self._path("running", name), encoding="utf-8") as fh:
                return Job(name, json.load(fh))
        return None

    def finish(self, job: Job) -> None:
        """Done: the job is removed."""
        try:
            os.unlink(self._path("running", job.name))
        except FileNotFoundError:
            pass

    def retry(self, job: Job, after: float, reason: str) -> None:
        """Back in the queue, due ``after`` seconds from now, one more attempt counted."""
        data = dict(job.data, attempts=job.attempts + 1, last_retry=reason)
        created = job.name.split("-")[1] if job.name.count("-") >= 2 else str(time.time_ns())
        self._write("queue", _name(time.time() + after, int(created), job.id), data)
        self.finish(job)

    def put_back(self, job: Job, **changes: Any) -> None:
        """Back in the queue under its own name (its place in the run order), with ``changes``."""
        self._write("queue", job.name, dict(job.data, **changes))
        self.finish(job)

    def requeue_running(self, name: str, reason: str, max_retries: int) -> bool:
        """A job whose spooler process died while running it: back in the queue to run again at
        once, one more attempt counted; past ``max_retries`` attempts it fails instead. True if
        it was queued again."""
        path = self._path("running", name)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            data = None
        job = Job(name, data if isinstance(data, dict) else {"id": name})
        if data is None or job.attempts >= max_retries:
            self.fail(job, f"{reason} (after {job.attempts} retries)", "")
            return False
        self.retry(job, 0.0, reason)
        return True

    def fail(self, job: Job, error: str, traceback_text: str) -> None:
        """Move to failed/ with the error; it stays there for an operator to look at."""
        data = dict(job.data, error=error, traceback=traceback_text, failed_at=time.time())
        self._write("failed", f"{job.id}.json", data)
        self.finish(job)

    def fail_running(self, name: str, error: str) -> None:
        """Fail a job by its file name in running/ (the supervisor, after killing its process)."""
        try:
            with open(self._path("running", name), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            data = {"id": name}
        self.fail(Job(name, data if isinstance(data, dict) else {"id": name}), error, "")

    def recover(self) -> int:
        """Put jobs left in running/ by a server that died back in the queue; how many."""
        count = 0
        for name in sorted(os.listdir(self._path("running"))):
            try:
                os.rename(self._path("running", name), self._path("queue", name))
                count += 1
            except FileNotFoundError:
                continue
        for name in os.listdir(self._path("tmp")):  # half-written jobs: .spool() never returned
            try:
                os.unlink(self._path("tmp", name))
            except FileNotFoundError:
                pass
        return count

    def counts(self) -> dict[str, int]:
        return {folder: sum(1 for n in os.listdir(self._path(folder)) if n.endswith(".json"))
                for folder in ("queue", "running", "failed")}

