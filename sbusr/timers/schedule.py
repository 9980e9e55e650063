"""``@timer`` and ``@cron``: mark module-level functions of endpoint modules to run on a schedule.

The decorators only attach a :class:`Schedule` to the function (no threads, no bus): sbusr-server
finds the marked functions in the endpoint modules it loaded (:func:`find_timers`) and its
scheduler (:mod:`sbusr.timers.scheduler`) runs each tick as a call of the built-in ``sbusr.timer.run``
method, so a tick takes the same path as any request.

``@cron`` takes uWSGI's fields (``-1`` = every, ``-N`` = every N-th, as in ``*/N``) or one crontab
string; croniter computes the times (local time, like cron).
"""

from __future__ import annotations

import datetime
import inspect
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from types import ModuleType
from typing import Any

TIMER_ATTR = "__sbusr_timer__"
TARGET_ATTR = "__sbusr_timer_target__"


class Target(StrEnum):
    """Where each tick of a timer runs; method writers pass the plain string."""

    SERVER = "server"  # once per server, in one worker
    WORKERS = "workers"  # in every worker process


class Schedule:
    """When a timer runs: :meth:`next_after` gives the next wall-clock time (epoch seconds)."""

    def next_after(self, now: float) -> float:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Every(Schedule):
    """Every ``seconds`` seconds, the first run one interval after the timer is picked up."""

    seconds: float

    def next_after(self, now: float) -> float:
        return now + self.seconds

    def describe(self) -> str:
        return f"every {self.seconds:g} s"


@dataclass(frozen=True)
class Crontab(Schedule):
    """A five-field crontab expression (minute hour day month weekday), local time."""

    expression: str

    def next_after(self, now: float) -> float:
        from croniter import croniter

        start = datetime.datetime.fromtimestamp(now).astimezone()
        return float(croniter(self.expression, start).get_next(float))

    def describe(self) -> str:
        return f"cron {self.expression}"


def _check_target(target: str) -> Target:
    try:
        return Target(target)
    except ValueError:
        raise ValueError(f"timer target must be one of {', '.join(Target)}, got {target!r}") from None


def _mark(schedule: Schedule, target: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    where = _check_target(target)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isfunction(func) or "." in func.__qualname__ or "<" in func.__qualname__:
            raise TypeError("@timer and @cron go on module-level functions")
        if getattr(func, TIMER_ATTR, None) is not None:
            raise TypeError(f"{func.__qualname__} already has a schedule")
        try:
            inspect.signature(func).bind()
        except TypeError:
            raise TypeError(f"timer function {func.__qualname__} must take no arguments") from None
        setattr(func, TIMER_ATTR, schedule)
        setattr(func, TARGET_ATTR, where)
        return func

    return decorate


def timer(seconds: float, target: str = "server") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the decorated module-level function every ``seconds`` seconds (uWSGI's ``@timer``).

    ``target="server"`` (the default): each tick runs once per server, in one worker.
    ``target="workers"``: each tick runs in every worker process (uWSGI's signal target
    "workers"), e.g. to refresh a per-process cache; in thread mode, where the server is one
    process, that is once.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds <= 0:
        raise ValueError(f"timer interval must be a number of seconds > 0, got {seconds!r}")
    return _mark(Every(float(seconds)), target)


def _field(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"cron {name} must be an integer (-1 = every, -N = every N-th), got {value!r}")
    if value == -1:
        return "*"
    if value < -1:
        return f"*/{-value}"
    return str(value)


def cron(minute: int | str = -1, hour: int = -1, day: int = -1, month: int = -1,
         weekday: int = -1, target: str = "server") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the decorated function at the given times (uWSGI's ``@cron`` fields or a crontab string).

    ``@cron(40, 2)`` runs at 02:40 every day, ``@cron(-5)`` every five minutes, and
    ``@cron("*/5 * * * 1-5")`` every five minutes on weekdays. Weekday 0 is Sunday.
    ``target`` as for :func:`timer`.
    """
    _check_target(target)
    if isinstance(minute, str):
        if (hour, day, month, weekday) != (-1, -1, -1, -1):
            raise ValueError("give either a crontab string or the fields, not both")
        expression = " ".join(minute.split())
    else:
        expression = " ".join(_field(v, n) for v, n in ((minute, "minute"), (hour, "hour"), (day, "day"),
                                                         (month, "month"), (weekday, "weekday")))
    from croniter import croniter

    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise ValueError(f"not a valid five-field crontab expression: {expression!r}")
    return _mark(Crontab(expression), target)


# --------------------------------------------------------------------------- discovery (server side)

@dataclass(frozen=True)
class TimerEntry:
    """One scheduled function found in a loaded endpoint module.

    ``module`` and ``qualname`` find the function; ``kind``/``source`` say how to load its module in a
    process that has not loaded it yet (see :func:`sbusr.dispatch.module_for`).
    """

    name: str
    module: str
    qualname: str
    kind: str
    source: str
    schedule: Schedule
    target: Target = Target.SERVER

    def params(self) -> dict[str, str]:
        """The params of the ``sbusr.timer.run`` call that runs one tick."""
        return {"module": self.module, "qualname": self.qualname, "kind": self.kind, "source": self.source}


def display_name(kind: str, source: str, qualname: str) -> str:
    """``stem.function`` for endpoint files, ``package.module.function`` for named modules."""
    if kind == "file":
        return f"{os.path.splitext(os.path.basename(source))[0]}.{qualname}"
    return f"{source}.{qualname}"


def find_timers(modules: Iterable[tuple[str, str, ModuleType]]) -> list[TimerEntry]:
    """Every ``@timer``/``@cron`` function defined in the given (kind, source, module) triples."""
    found: list[TimerEntry] = []
    for kind, source, module in modules:
        for attr, obj in sorted(vars(module).items()):
            schedule = getattr(obj, TIMER_ATTR, None) if inspect.isfunction(obj) else None
            if isinstance(schedule, Schedule) and obj.__module__ == module.__name__ \
                    and obj.__qualname__ == attr:
                found.append(TimerEntry(display_name(kind, source, attr), module.__name__, attr, kind, source,
                                        schedule, getattr(obj, TARGET_ATTR, Target.SERVER)))
    return found


def wall_to_iso(when: float | None) -> str | None:
    """Epoch seconds as local ISO 8601 (what ``sys.timers`` shows)."""
    if when is None:
        return None
    return datetime.datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds")


def now() -> float:
    return time.time()
