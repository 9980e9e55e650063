"""``[execution] worker_init``: the start-up hook run once per worker (thread mode: once per server)."""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any

from sbusr.dispatch import aio

LOG = logging.getLogger("sbusr.execution")


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
    if not spec:
        return None
    try:
        started = load_hook(spec)()
        if inspect.isawaitable(started):  # async def: on the loop every async method runs on
            aio.run(started)
    except (Exception, SystemExit) as exc:
        LOG.exception("worker_init %s failed", spec)
        return f"{type(exc).__name__}: {exc}"
    return None
