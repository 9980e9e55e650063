"""JSON-RPC 2.0 error codes, the exceptions that carry them, and the mapping from any exception to
the error object a caller gets."""

from __future__ import annotations

import traceback
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000  # the method raised
CALL_TIMEOUT = -32001
SERVER_BUSY = -32002
WORKER_CRASHED = -32003

#: characters of a caller-supplied name (a method) quoted in an error message
MAX_QUOTED_NAME = 200
#: characters of an error text (an exception's message) sent in a reply; with ASCII escapes even
#: CJK text (6 bytes a character) stays well inside the 15,999-byte SmartBus NOTIFY
MAX_ERROR_TEXT = 2000


def cut(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


# --------------------------------------------------------------------------- exceptions

def _rebuild_error(cls: type[RpcError], code: int, message: str, data: Any) -> RpcError:
    err = cls.__new__(cls)
    RpcError.__init__(err, code, message, data)
    return err


class RpcError(Exception):
    """An error with a JSON-RPC code; any method may raise it to return that exact error."""

    code = SERVER_ERROR
    default_message = "Server error"

    def __init__(self, code: int | None = None, message: str | None = None, data: Any = None):
        self.code = self.code if code is None else int(code)
        self.message = self.default_message if message is None else str(message)
        self.data = data
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        # Pickles by value whatever the subclass __init__ looks like (process-pool workers send these).
        return (_rebuild_error, (type(self), self.code, self.message, self.data))


class _FixedCodeError(RpcError):
    """An RpcError whose code is fixed by its class: constructed as ``Cls(message=None, data=None)``."""

    def __init__(self, message: str | None = None, data: Any = None):
        super().__init__(None, message, data)


class ParseError(_FixedCodeError):
    code = PARSE_ERROR
    default_message = "Parse error"


class InvalidRequest(_FixedCodeError):
    code = INVALID_REQUEST
    default_message = "Invalid Request"


class MethodNotFound(_FixedCodeError):
    code = METHOD_NOT_FOUND
    default_message = "Method not found"


class InvalidParams(_FixedCodeError):
    code = INVALID_PARAMS
    default_message = "Invalid params"


class InternalError(_FixedCodeError):
    code = INTERNAL_ERROR
    default_message = "Internal error"


class CallTimeout(_FixedCodeError):
    code = CALL_TIMEOUT
    default_message = "Call timed out"


class ServerBusy(_FixedCodeError):
    code = SERVER_BUSY
    default_message = "Server busy"


class WorkerCrashed(_FixedCodeError):
    code = WORKER_CRASHED
    default_message = "Worker process crashed"


class MethodRaised(_FixedCodeError):
    """-32000 for an unexpected exception raised elsewhere (a worker process) and logged there."""

    code = SERVER_ERROR
    default_message = "Server error"



def qualified_name(cls: type) -> str:
    module = getattr(cls, "__module__", None) or "builtins"
    return f"{module}.{getattr(cls, '__qualname__', cls.__name__)}"


def safe_str(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # a broken __str__ must not break the error reply
        text = ""
    return text or type(exc).__name__


def unwrap_exception(exc: Any) -> BaseException:
    """Accept an exception, an ``exc_info`` tuple, or oslo's ``ExpectedException`` wrapper."""
    from oslo_messaging.rpc import dispatcher as rpc_dispatcher

    if isinstance(exc, tuple):
        exc = exc[1]
    if isinstance(exc, rpc_dispatcher.ExpectedException):
        exc = exc.exc_info[1]
    return exc


def error_from_exception(exc: Any, debug: bool = False) -> tuple[int, str, Any]:
    """Map a dispatch failure to ``(code, message, data)`` for :func:`error_response`."""
    from oslo_messaging.rpc import dispatcher as rpc_dispatcher

    exc = unwrap_exception(exc)
    if isinstance(exc, (rpc_dispatcher.NoSuchMethod, rpc_dispatcher.UnsupportedVersion)):
        return METHOD_NOT_FOUND, f"Method not found: {cut(str(exc.method), MAX_QUOTED_NAME)}", None
    if isinstance(exc, RpcError):
        return exc.code, cut(exc.message, MAX_ERROR_TEXT), exc.data
    data: dict[str, Any] = {"type": qualified_name(type(exc))}
    if debug:
        data["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return SERVER_ERROR, cut(safe_str(exc), MAX_ERROR_TEXT), data
