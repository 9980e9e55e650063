"""``@limits``: per-class and per-method time limits, and how the execution layer reads them.

Imports no bus, driver or server code, so that ``sbusr.decorators`` and endpoint code can import it
cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LIMITS_ATTR = "__sbusr_limits__"


@dataclass(frozen=True)
class Limits:
    """Execution limits attached to an endpoint class, method or function by :func:`limits`."""

    timeout: float | None = None  # seconds; 0 = no limit; None = inherit (class, then config)


def limits(*, timeout: float | None = None) -> Callable[[Any], Any]:
    """Override ``[execution] call_timeout`` for one method or every method of an endpoint class.

    ``@limits(timeout=5)`` above ``def``/``@staticmethod``/``@classmethod`` or a class; 0 means
    no limit. A method's setting beats its class's, which beats the configuration. On a
    ``@spool`` function it is the limit of each run of the job.
    """
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"timeout must be a number >= 0 (0 = no limit), got {timeout!r}")
        timeout = float(timeout)
    value = Limits(timeout)

    def decorate(obj: Any) -> Any:
        target = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
        setattr(target, LIMITS_ATTR, value)
        return obj

    return decorate


def own_timeout(obj: Any) -> float | None:
    """The timeout ``@limits`` set on ``obj`` itself, or None."""
    found = getattr(obj, LIMITS_ATTR, None)
    return found.timeout if isinstance(found, Limits) else None


def class_timeout(endpoint: Any, default: float) -> float:
    """The limit of an endpoint's methods that set none themselves: its class's, else ``default``."""
    own = own_timeout(type(endpoint))
    return default if own is None else own


def call_timeout(fn: Any, class_default: float) -> float:
    """The limit of one bound method: its own ``@limits``, else the class's/configured one."""
    found = getattr(fn, LIMITS_ATTR, None)
    return class_default if found is None or found.timeout is None else found.timeout
