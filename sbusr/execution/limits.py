"""Time limits as the execution layer reads them; ``@limits`` itself lives in :mod:`sbusr.limits`
(no heavy imports, for endpoint code and ``sbusr.decorators``) and is re-exported here, so
``from sbusr.execution import limits`` keeps working."""

from __future__ import annotations

from typing import Any

from sbusr.limits import LIMITS_ATTR, Limits, limits, own_timeout

__all__ = ["LIMITS_ATTR", "Limits", "call_timeout", "class_timeout", "limits", "own_timeout"]


def class_timeout(endpoint: Any, default: float) -> float:
    """The limit of an endpoint's methods that set none themselves: its class's, else ``default``."""
    own = own_timeout(type(endpoint))
    return default if own is None else own


def call_timeout(fn: Any, class_default: float) -> float:
    """The limit of one bound method: its own ``@limits``, else the class's/configured one."""
    found = getattr(fn, LIMITS_ATTR, None)
    return class_default if found is None or found.timeout is None else found.timeout
