"""The original sbusr's example methods (``methods.add``, ``echo``, ...), served in the null namespace.

Parameter names match the original so named-params calls written for it keep working.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import oslo_messaging

from sbusr.jsonrpc.errors import InvalidParams

LOG = logging.getLogger(__name__)

#: Longest sleep() accepted, in seconds: a flow cannot park a worker for longer than this.
MAX_SLEEP = 300.0


class BuiltinEndpoint:
    """add, echo, plus, sleep, exception, warnlog."""

    target = oslo_messaging.Target()

    def add(self, ctxt: Any, a: Any, b: Any) -> Any:
        """Return ``a + b`` (numbers, strings or lists, as Python adds them)."""
        try:
            return a + b
        except TypeError as exc:
            raise InvalidParams(f"cannot add {type(a).__name__} and {type(b).__name__}") from exc

    def echo(self, ctxt: Any, txt: Any) -> Any:
        """Return ``txt`` unchanged."""
        return txt

    def plus(self, ctxt: Any, *args: Any) -> Any:
        """Return the sum of all arguments (0 for none)."""
        try:
            return sum(args)
        except TypeError as exc:
            raise InvalidParams("plus() takes numbers only") from exc

    def sleep(self, ctxt: Any, seconds: Any) -> None:
        """Sleep ``seconds`` (0..MAX_SLEEP) and return null."""
        if (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                or not math.isfinite(seconds) or not 0 <= seconds <= MAX_SLEEP):
            raise InvalidParams(f"seconds must be a number from 0 to {MAX_SLEEP:g}")
        time.sleep(seconds)

    def exception(self, ctxt: Any, *args: Any) -> None:
        """Raise an Exception built from the arguments (tests error replies end to end)."""
        raise Exception(*args)

    def warnlog(self, ctxt: Any, msg: Any) -> None:
        """Write ``msg`` to the server log at WARNING level."""
        LOG.warning("%s", msg)
