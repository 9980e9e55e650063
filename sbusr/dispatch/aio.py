"""One asyncio event loop per process for ``async def`` methods and an async ``worker_init``.

Every coroutine a method or the start-up hook returns runs on the same loop, in one daemon thread
started on first use, so a client session (httpx, aiohttp) opened by ``worker_init`` is usable by
every call. The calling thread (an executor thread) waits for its coroutine's result; a
:class:`CancelScope` lets the thread-mode watchdog cancel the task of a call that overran its limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The process's event loop, started (in thread ``sbusr-asyncio``) on first use."""
    global _loop, _thread
    running = _loop
    if running is not None:
        return running
    with _lock:
        if _loop is None:
            new = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(new)
                new.call_soon(ready.set)
                new.run_forever()

            _thread = threading.Thread(target=run, name="sbusr-asyncio", daemon=True)
            _thread.start()
            ready.wait()
            _loop = new
        return _loop


class CancelScope:
    """Cancels the coroutine a call runs on the loop, also when cancel() comes before it started."""

    __slots__ = ("_future", "cancelled")

    def __init__(self) -> None:
        self.cancelled = False
        self._future: concurrent.futures.Future[Any] | None = None

    def attach(self, future: concurrent.futures.Future[Any]) -> None:
        self._future = future
        if self.cancelled:
            future.cancel()

    def cancel(self) -> None:
        """From any thread: cancel the call's task (the waiting thread gets CancelledError)."""
        self.cancelled = True
        future = self._future
        if future is not None:
            future.cancel()


_scope: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar("sbusr_cancel_scope",
                                                                             default=None)


def enter_scope(scope: CancelScope) -> contextvars.Token[CancelScope | None]:
    """Make ``scope`` the one coroutines run by :func:`run` in this thread attach to (until
    :func:`leave_scope`); two context-variable operations, no context-manager cost per call."""
    return _scope.set(scope)


def leave_scope(token: contextvars.Token[CancelScope | None]) -> None:
    _scope.reset(token)


def run(awaitable: Awaitable[Any]) -> Any:
    """Run ``awaitable`` on the process's loop and wait for its result (from any other thread)."""
    target = loop()
    if _thread is threading.current_thread():
        raise RuntimeError("sbusr.dispatch.aio.run() called on the event loop's own thread")
    future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), target)
    scope = _scope.get()
    if scope is not None:
        scope.attach(future)
    return future.result()


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def is_async(fn: Any) -> bool:
    """True for an ``async def`` function or method (whose call returns a coroutine)."""
    return inspect.iscoroutinefunction(fn)


def blocking(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function that runs ``async def fn`` on the loop and returns its result.

    The task starts with a copy of the calling thread's context variables (asyncio copies them
    through ``call_soon_threadsafe``), so the call's logging context reaches the coroutine.
    ``functools.wraps`` keeps ``fn``'s name and its ``@limits``.
    """

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return run(fn(*args, **kwargs))

    return call
