"""JSON text from outside -> Python values, refusing what a reply could not carry back.

Python's ``json`` accepts ``NaN`` and ``Infinity`` (not JSON) and turns ``1e999`` into an infinity;
none of them can be written into a reply, so a request holding one is refused where it is parsed
instead of failing later, far from its cause.
"""

from __future__ import annotations

import json
import math
from typing import Any


class Refused(ValueError):
    """Text that parses as Python's JSON but holds a value JSON cannot carry (the message says which)."""


def _reject_constant(name: str) -> Any:
    raise Refused(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Refused(f"{text[:40]} is not a finite number")
    return value


def loads(text: str) -> Any:
    """``json.loads`` that raises :class:`Refused` for NaN, Infinity and numbers beyond a double."""
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
