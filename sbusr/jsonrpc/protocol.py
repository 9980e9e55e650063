"""JSON-RPC 2.0 requests and responses: parsing, the mapping of a call to an oslo.messaging message,
reply titles and response objects.

A request without a ``"jsonrpc"`` member is accepted (the original sbusr's docs show
``{"method": "add", "params": [1, 2]}``); a present but wrong one is rejected.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from sbusr.jsonrpc import strict_json
from sbusr.jsonrpc.errors import (
    INVALID_REQUEST,
    MAX_QUOTED_NAME,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ParseError,
    cut,
)

LOG = logging.getLogger(__name__)
_dropped_log: Any = None

VERSION = "2.0"

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


def valid_id(value: Any) -> bool:
    """A string, a number a reply can carry, or null."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _parse_one(obj: Any) -> Call | dict | None:
    """One request object -> Call, an error response, or None (notification nobody may answer)."""
    if not isinstance(obj, dict):
        return error_response(None, INVALID_REQUEST, "Invalid Request: not an object")
    has_id = "id" in obj
    req_id = obj.get("id")
    if has_id and not valid_id(req_id):
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
        obj = strict_json.loads(text)
    except strict_json.Refused as exc:
        return Parsed(False, [error_response(None, PARSE_ERROR, f"Parse error: {exc}")])
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
