"""The call context a method receives as ``ctxt``: still the dict it always was, now also an
oslo.context ``RequestContext`` that knows the method, the caller and the deadline.

While a method runs, its context is the current one (a context variable: per thread, and per task
for ``async def`` methods), and :class:`LogContextFilter` hands it to oslo.log, which then writes the
JSON-RPC request id on every line logged during the call -- the method's own loggers included --
where ``[-]`` stands otherwise.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from typing import Any, NamedTuple

from oslo_context import context as oslo_context


class Caller(NamedTuple):
    """The SmartBus client that sent the request (a flow's IPSC unit and process)."""

    unit: int | None
    client: int | None
    type: int | None


def _request_context_defaults() -> dict[str, Any]:
    """RequestContext's attributes with their defaults, read off its __init__ (making one would
    install it as the thread's current context)."""
    defaults: dict[str, Any] = {}
    for name, param in inspect.signature(oslo_context.RequestContext.__init__).parameters.items():
        if name in ("self", "overwrite", "request_id"):
            continue
        value = param.default
        defaults["_is_admin" if name == "is_admin" else name] = (
            () if name in ("roles", "service_roles") else value)
    return defaults


#: set as class attributes: a CallContext is made per call and sets only its own (RequestContext's
#: __init__ would set some thirty and touch a thread-local)
_DEFAULTS = _request_context_defaults()


class CallContext(oslo_context.RequestContext, dict):
    """``ctxt``: ``ctxt["request_id"]``, ``ctxt["source"]`` (the dict original methods read), plus ``method``,
    ``request_id``, ``caller``, ``deadline`` (epoch seconds, None without a limit), ``time_left()``."""

    def __init__(self, values: dict[str, Any], method: str | None = None) -> None:
        dict.__init__(self, values)
        self.method = method
        self.deadline: float | None = None

    # dict's equality and hash, not object's: ctxt compares as the dict it is
    __eq__ = dict.__eq__
    __ne__ = dict.__ne__
    __hash__ = None

    @property
    def request_id(self) -> Any:
        """The JSON-RPC id of the request (None for a notification)."""
        return self.get("request_id")

    @request_id.setter
    def request_id(self, value: Any) -> None:
        self["request_id"] = value

    @property
    def caller(self) -> Caller:
        source = self.get("source")
        if not isinstance(source, dict):
            return Caller(None, None, None)
        return Caller(source.get("unit"), source.get("client"), source.get("type"))

    def time_left(self) -> float | None:
        """Seconds until the call's time limit (0.0 once past it), None when it has none."""
        deadline = self.deadline
        return None if deadline is None else max(0.0, deadline - time.time())

    def set_timeout(self, timeout: float) -> None:
        """Start the deadline clock: ``timeout`` seconds from now (0 = no limit)."""
        self.deadline = time.time() + timeout if timeout else None

    def get_logging_values(self) -> dict[str, Any]:
        values = super().get_logging_values()
        request_id = self.get("request_id")
        values["request_id"] = "" if request_id is None else str(request_id)
        values["method"] = self.method
        return values

    def __repr__(self) -> str:
        return f"CallContext({dict.__repr__(self)}, method={self.method!r})"

    def __reduce__(self) -> Any:  # pickles (and copies) as the dict it is, plus the method
        return (CallContext, (dict(self), self.method), {"deadline": self.deadline})


for _name, _value in _DEFAULTS.items():
    setattr(CallContext, _name, _value)


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("sbusr_call_context",
                                                                              default=None)


def current() -> CallContext | None:
    """The context of the call this thread (or task) runs, None outside a call."""
    return _current.get()


def enter(ctxt: CallContext) -> contextvars.Token[CallContext | None]:
    return _current.set(ctxt)


def leave(token: contextvars.Token[CallContext | None]) -> None:
    _current.reset(token)


def of(ctxt: Any, method: str | None) -> CallContext:
    """``ctxt`` as a CallContext (the driver and sbusr.testing pass the plain dict)."""
    if isinstance(ctxt, CallContext):
        if ctxt.method is None:
            ctxt.method = method
        return ctxt
    return CallContext(ctxt if isinstance(ctxt, dict) else {}, method)


class LogContextFilter(logging.Filter):
    """Gives every record logged during a call that call's context, for oslo.log's formatter.

    A handler filter, not a record factory: it runs after ``extra`` was applied, so a record that
    already carries a ``context`` keeps it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if "context" not in record.__dict__:
            ctxt = _current.get()
            if ctxt is not None:
                record.context = ctxt
        return True


def install_log_filter(logger: logging.Logger | None = None) -> None:
    """Add :class:`LogContextFilter` to the handlers of ``logger`` (the root logger) that lack it."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, LogContextFilter) for f in handler.filters):
            handler.addFilter(LogContextFilter())
