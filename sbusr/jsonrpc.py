"""JSON-RPC 2.0 framing for sbusr: parsing requests, building responses, mapping exceptions.

The SmartBus driver turns each parsed :class:`Call` into an oslo.messaging message with
:func:`oslo_message` and answers under :func:`reply_title` with :func:`result_response` /
:func:`error_from_exception`; nothing here touches the bus or knows the endpoint adapters.

Compatibility with the original sbusr: a request without a ``"jsonrpc"`` member is accepted (its docs
show ``{"method": "add", "params": [1, 2]}``); a present but wrong one is rejected.

Encoding decisions (:func:`dumps`): replies are pure ASCII (``\\uXXXX`` escapes) so they survive whatever
encoding the IPSC assumes. A :class:`decimal.Decimal` goes out as a JSON number with exactly its digits
(``1.00`` stays ``1.00``; ``decimal_as="string"`` sends ``"1.00"`` instead). Dates become ISO 8601 text,
bytes text (base64 if not UTF-8), sets lists, dataclasses and pydantic models objects. A result JSON
cannot carry -- NaN, an infinity, a generator, any object of no known kind, a circular structure --
makes :func:`dumps` return an internal-error response (-32603) for the same id instead of raising.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import json
import logging
import math
import re
import secrets
import traceback
import uuid
from collections import abc
from dataclasses import dataclass
from typing import Any

LOG = logging.getLogger(__name__)
_dropped_log: Any = None

VERSION = "2.0"

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

def _rebuild_error(cls: type, code: int, message: str, data: Any) -> RpcError:
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


# --------------------------------------------------------------------------- decoding / parsing

def decode_payload(data: bytes, fallback_encoding: str = "gbk") -> str:
    """Bytes from the bus -> text: UTF-8 (BOM allowed) first, then ``fallback_encoding``.

    Trailing NUL bytes (C-string padding) are dropped. Raises :class:`ParseError` if neither fits.
    """
    data = bytes(data).rstrip(b"\x00")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode(fallback_encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ParseError(f"Parse error: payload is neither UTF-8 nor {fallback_encoding}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Call:
    """One valid request of a (possibly batch) JSON-RPC message."""

    id: Any
    is_notification: bool
    method: str
    params: list | dict

    @property
    def namespace(self) -> str | None:
        return split_method(self.method)[0]

    @property
    def name(self) -> str:
        return split_method(self.method)[1]


@dataclass(frozen=True, slots=True)
class Parsed:
    """Result of :func:`parse`: items are :class:`Call` or ready error-response dicts."""

    is_batch: bool
    items: list


def split_method(method: str) -> tuple[str | None, str]:
    """``"a.b.c" -> ("a.b", "c")``; ``"add" -> (None, "add")``."""
    namespace, _, name = method.rpartition(".")
    return (namespace or None), name


def is_dispatchable_name(method: str) -> bool:
    """True if every dotted part is a public Python identifier (names the endpoint layer reserves
    for itself are refused there, by ``dispatch.AccessPolicy``)."""
    return all(part.isidentifier() and not part.startswith("_") for part in method.split("."))


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (
        isinstance(value, (int, float)) and not isinstance(value, bool))


def _parse_one(obj: Any) -> Call | dict | None:
    """One request object -> Call, an error response, or None (notification nobody may answer)."""
    if not isinstance(obj, dict):
        return error_response(None, INVALID_REQUEST, "Invalid Request: not an object")
    has_id = "id" in obj
    req_id = obj.get("id")
    if has_id and not _valid_id(req_id):
        return error_response(None, INVALID_REQUEST, "Invalid Request: id must be a string, number or null")
    if "jsonrpc" in obj and obj["jsonrpc"] != VERSION:
        return error_response(req_id, INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"')
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        return error_response(req_id, INVALID_REQUEST, "Invalid Request: method must be a non-empty string")
    params = obj.get("params", [])
    if not isinstance(params, (list, dict)):
        return error_response(req_id, INVALID_REQUEST, "Invalid Request: params must be an array or object")
    if not is_dispatchable_name(method):
        if not has_id:
            _log_dropped(method)
            return None
        return error_response(req_id, METHOD_NOT_FOUND, f"Method not found: {cut(method, MAX_QUOTED_NAME)}")
    return Call(id=req_id, is_notification=not has_id, method=method, params=params)


def _log_dropped(method: str) -> None:
    """Notifications get no reply, so a flood of bad ones could only flood the log: one line per 10 s."""
    global _dropped_log
    if _dropped_log is None:
        # imported here: sbusr.decorators imports this module and must not pull in the bus package
        from sbusr.util.ratelog import RateLimitedLog
        _dropped_log = RateLimitedLog(LOG, logging.WARNING, 10.0)
    _dropped_log.log("undispatchable", "Dropping notification for undispatchable method %r",
                     cut(method, MAX_QUOTED_NAME))


def parse(text: str) -> Parsed:
    """Parse a JSON-RPC 2.0 request or batch; never raises for any input text."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError, TypeError):
        return Parsed(False, [error_response(None, PARSE_ERROR, "Parse error")])
    if isinstance(obj, list):
        if not obj:
            return Parsed(False, [error_response(None, INVALID_REQUEST, "Invalid Request: empty batch")])
        items = [item for item in map(_parse_one, obj) if item is not None]
        return Parsed(True, items)
    item = _parse_one(obj)
    return Parsed(False, [] if item is None else [item])


# --------------------------------------------------------------------------- the oslo.messaging mapping

#: Key of an oslo message's ``args`` under which positional JSON-RPC params travel (oslo passes
#: ``args`` to the endpoint as keyword arguments, so a list needs a name).
POSITIONAL_KEY = "*args"


def oslo_message(call: Call) -> dict[str, Any]:
    """The oslo.messaging message for ``call``: ``a.b.c`` -> namespace ``a.b``, method ``c``."""
    namespace, method = split_method(call.method)
    return {"method": method, "namespace": namespace, "args": oslo_args(call.params)}


def oslo_args(params: list | dict) -> dict[str, Any]:
    """JSON-RPC params as oslo ``args``: named params as they are, positional ones under POSITIONAL_KEY."""
    return dict(params) if isinstance(params, dict) else {POSITIONAL_KEY: list(params)}


def params_from_args(args: dict[str, Any]) -> list | dict:
    """The JSON-RPC params of oslo ``args`` (the inverse of :func:`oslo_args`)."""
    return args[POSITIONAL_KEY] if POSITIONAL_KEY in args else args


def full_method(namespace: str | None, method: str) -> str:
    """The JSON-RPC method name of an oslo namespace and method (the inverse of :func:`split_method`)."""
    return f"{namespace}.{method}" if namespace else method


def reply_title(request_id: Any) -> str:
    """The NOTIFY title a flow waits on: the request id as text, "null" when there is none.

    Never empty: the vendor library refuses a NOTIFY with an empty title (so an id of "" is
    answered under "null" too).
    """
    if request_id is None or request_id == "":
        return "null"
    if isinstance(request_id, bool):
        return "true" if request_id else "false"
    return str(request_id)


def reply_title_for(items: list[Call | dict]) -> str | None:
    """The title of the one NOTIFY answering a request's parsed ``items`` (the first answered item's
    id, see :func:`reply_title`); None when nothing is answered (notifications only)."""
    for item in items:
        if not isinstance(item, Call):
            return reply_title(item.get("id"))
        if not item.is_notification:
            return reply_title(item.id)
    return None


# --------------------------------------------------------------------------- responses

def result_response(id: Any, value: Any) -> dict:
    return {"jsonrpc": VERSION, "id": id, "result": value}


def error_response(id: Any, code: int, message: str, data: Any = None) -> dict:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": VERSION, "id": id, "error": error}


def _qualified_name(cls: type) -> str:
    module = getattr(cls, "__module__", None) or "builtins"
    return f"{module}.{getattr(cls, '__qualname__', cls.__name__)}"


def _safe_str(exc: BaseException) -> str:
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
    data: dict[str, Any] = {"type": _qualified_name(type(exc))}
    if debug:
        data["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return SERVER_ERROR, cut(_safe_str(exc), MAX_ERROR_TEXT), data


# --------------------------------------------------------------------------- encoding

class NotJSON(TypeError):
    """A value JSON cannot carry (its message is the -32603 reply's)."""


#: Decimals travel through json.dumps as strings starting with this per-process random mark, then
#: lose their quotes and the mark (json offers no hook to write a number's text).
_DECIMAL_MARK = f"sbusr-decimal-{secrets.token_hex(8)}:"
_DECIMAL_TOKEN = re.compile(f'"{re.escape(_DECIMAL_MARK)}([^"]*)"')
DECIMAL_AS = ("number", "string")


def _finite_decimal(obj: decimal.Decimal) -> str:
    if not obj.is_finite():
        raise NotJSON(f"result contains the Decimal {obj}, which JSON cannot carry")
    return str(obj)


def _default(obj: Any) -> Any:
    """json's hook for values it cannot encode natively (decimals as numbers)."""
    if isinstance(obj, decimal.Decimal):
        return _DECIMAL_MARK + _finite_decimal(obj)
    return _convert(obj)


def _default_decimal_string(obj: Any) -> Any:
    if isinstance(obj, decimal.Decimal):
        return _finite_decimal(obj)
    return _convert(obj)


def _convert(obj: Any) -> Any:
    """The JSON-friendly form of a value of a known kind; NotJSON for any other."""
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    cls = type(obj)
    to_json = getattr(cls, "__json__", None)
    if callable(to_json):
        return to_json(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if callable(getattr(cls, "model_dump", None)) and hasattr(cls, "model_fields"):  # a pydantic model
        return obj.model_dump()
    if isinstance(obj, (set, frozenset)):
        try:
            return sorted(obj)
        except TypeError:
            return list(obj)
    if isinstance(obj, abc.Mapping):
        return dict(obj)
    if isinstance(obj, (abc.Set, abc.Sequence)):
        return list(obj)
    raise NotJSON(f"result of type {cls.__name__} is not JSON")


_MAX_DEPTH = 200


def _sanitize(obj: Any, default: Any, depth: int = 0, active: frozenset = frozenset()) -> Any:
    """Slow path: non-string keys -> strings, NaN and cycles -> errors. Run only if needed."""
    if depth > _MAX_DEPTH:
        raise ValueError("structure nested too deeply")
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise NotJSON(f"result contains the number {obj}, which JSON cannot carry")
        return obj
    if obj is None or isinstance(obj, (str, int)):
        return obj
    if id(obj) in active:
        raise ValueError("result contains a circular reference")
    inner = active | {id(obj)}
    if isinstance(obj, dict):
        return {_key(k): _sanitize(v, default, depth + 1, inner) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v, default, depth + 1, inner) for v in obj]
    return _sanitize(default(obj), default, depth + 1, inner)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key, allow_nan=True)
    if isinstance(key, decimal.Decimal):
        return str(key)
    value = _convert(key)
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _encode(obj: Any, default: Any = _default) -> bytes:
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=default)
    if _DECIMAL_MARK in text:
        text = _DECIMAL_TOKEN.sub(r"\1", text)
    return text.encode("ascii")


def _encode_or_fallback(obj: Any, default: Any = _default) -> bytes:
    try:
        return _encode(obj, default)
    except Exception:
        pass  # NaN, odd keys, cycles, depth, a failing __json__: take the careful path
    try:
        return _encode(_sanitize(obj, default), default)
    except Exception as exc:
        req_id = obj.get("id") if isinstance(obj, dict) and _valid_id(obj.get("id")) else None
        LOG.error("Cannot encode reply for id %r as JSON: %s", req_id, _safe_str(exc))
        if isinstance(exc, NotJSON):
            return _encode(error_response(req_id, INTERNAL_ERROR, cut(str(exc), MAX_ERROR_TEXT)))
        return _encode(error_response(req_id, INTERNAL_ERROR, "Internal error: result is not JSON-encodable",
                                      {"type": _qualified_name(type(exc)), "detail": _safe_str(exc)}))


def loads_or_text(raw: bytes | str) -> Any:
    """Parse a JSON payload from the bus, falling back to its text when it is not JSON."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw  # flow results are str
    try:
        return json.loads(text)
    except ValueError:
        return text


def dumps(obj: Any, decimal_as: str = "number") -> bytes:
    """Compact, ASCII-only JSON bytes of a response (or batch list of responses); never raises.

    ``decimal_as``: ``"number"`` (a Decimal's exact digits as a JSON number) or ``"string"``.
    A batch is encoded element by element on failure, so one bad result spoils only its own reply.
    """
    default = _default if decimal_as == "number" else _default_decimal_string
    if isinstance(obj, list):
        try:
            return _encode(obj, default)
        except Exception:
            return b"[" + b",".join(_encode_or_fallback(item, default) for item in obj) + b"]"
    return _encode_or_fallback(obj, default)
