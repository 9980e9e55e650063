"""``[execution] worker_init``: the start-up hook run once per worker (thread mode: once per server).

A hook that raises means the worker cannot serve: it does not boot (:class:`BootFailed`). At
start-up the server gives up after a few failed boots and exits with :data:`BOOT_FAILED_EXIT`
(gunicorn's "Worker failed to boot"); later (a reload, a replacement) the running code keeps serving.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import traceback
from typing import Any

from sbusr.dispatch import aio

LOG = logging.getLogger("sbusr.execution")

#: exit status of a server whose workers cannot boot, and of a worker process that cannot boot
BOOT_FAILED_EXIT = 3


class BootFailed(Exception):
    """A worker (thread mode: the server) cannot start serving; ``str()`` is the one-line cause,
    ``detail`` the traceback behind it (logged only with ``--debug``)."""

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.detail = detail


def load_hook(spec: str) -> Any:
    """``"package.module:function"`` -> the callable (raises ImportError/AttributeError/ValueError)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"worker_init must look like 'module:function', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"worker_init {spec!r} is not callable")
    return obj


def run_hook(spec: str | None) -> str | None:
    """Run the start-up hook; return None, or a one-line description of why it failed (logged)."""
    try:
        require_hook(spec)
    except BootFailed as exc:
        LOG.error("%s\n%s", exc.cause, exc.detail)
        return exc.cause
    return None


def require_hook(spec: str | None) -> None:
    """Run the start-up hook; BootFailed naming the function and its exception if it raises."""
    if not spec:
        return
    try:
        started = load_hook(spec)()
        if inspect.isawaitable(started):  # async def: on the loop every async method runs on
            aio.run(started)
    except (Exception, SystemExit) as exc:
        raise BootFailed(f"worker_init {spec} raised {describe(exc)}", traceback.format_exc()) from None


def describe(exc: BaseException) -> str:
    """``"RuntimeError: no database today"`` (first line of the message only)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
