"""JSON for replies (:func:`dumps`): pure ASCII so replies survive whatever encoding the IPSC assumes.

A :class:`decimal.Decimal` goes out as a JSON number with exactly its digits (``1.00`` stays ``1.00``;
``decimal_as="string"`` sends ``"1.00"`` instead). Dates become ISO 8601 text, bytes text (base64 if
not UTF-8), sets lists, dataclasses and pydantic models objects. A result JSON cannot carry -- NaN, an
infinity, a generator, any object of no known kind, a circular structure -- makes :func:`dumps` return
an internal-error response (-32603) for the same id instead of raising.
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
import uuid
from collections import abc
from typing import Any

from sbusr.jsonrpc.errors import INTERNAL_ERROR, MAX_ERROR_TEXT, cut, qualified_name, safe_str
from sbusr.jsonrpc.protocol import error_response, valid_id

LOG = logging.getLogger(__name__)

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
        req_id = obj.get("id") if isinstance(obj, dict) and valid_id(obj.get("id")) else None
        LOG.error("Cannot encode reply for id %r as JSON: %s", req_id, safe_str(exc))
        if isinstance(exc, NotJSON):
            return _encode(error_response(req_id, INTERNAL_ERROR, cut(str(exc), MAX_ERROR_TEXT)))
        return _encode(error_response(req_id, INTERNAL_ERROR, "Internal error: result is not JSON-encodable",
                                      {"type": qualified_name(type(exc)), "detail": safe_str(exc)}))


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
