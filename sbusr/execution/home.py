"""The one thread that runs ``worker_init`` and then every method of a process serving one call at a
time, so objects bound to the thread that made them (a ``sqlite3`` connection) work in every call.

The rule (README, "worker_init and threads"): a process that runs one method at a time --
``[execution] threads = 1`` in process mode (the default), ``workers = 1`` in thread mode -- runs
``worker_init`` and every method on one thread. With more, methods run on several threads, none of
them ``worker_init``'s: open thread-bound objects per thread (``threading.local``).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from oslo_config import cfg

T = TypeVar("T")


def one_thread(conf: cfg.ConfigOpts) -> bool:
    """True when ``conf``'s execution settings run one method at a time in a process."""
    group = conf.execution
    return group.threads == 1 if group.mode == "process" else group.workers == 1


class HomeThread:
    """A daemon thread to run calls on: :meth:`run` hands a call over and waits for its end.

    Daemon, so a method stuck on it never keeps the process from exiting.
    """

    def __init__(self, name: str = "sbusr-methods") -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """``fn(*args, **kwargs)`` on this thread, in the caller's context (its current call)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        context = contextvars.copy_context()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = context.run(fn, *args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        self._jobs.put(job)
        return future

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on this thread; its result or exception."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """The thread ends after the calls handed over so far."""
        self._jobs.put(None)
