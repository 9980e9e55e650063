"""What a client may send to sbusr-api, checked before anything reaches the bus.

A ``POST /api/flow`` body becomes a flow start only if it fits the SmartBus frame it is sent in:
names of at most 31 bytes in the bus encoding without NULs, an IPSC unit and process in range,
parameters that encode within ``codec.MAX_FLOW_PARAMS``, nothing nested deeper than 32 levels and
no number JSON cannot carry. Every refusal is an :class:`ApiError` 400 whose message says what is
wrong, never a 500 from deeper down.
"""

from __future__ import annotations

from typing import Any

from sbusr.api.errors import ApiError
from sbusr.jsonrpc import strict_json
from sbusr.jsonrpc.encoding import dumps
from sbusr.smartbus import codec

#: project and flow are char[32] on the wire, NUL-terminated
NAME_MAX_BYTES = 31
FLOW_FIELDS = frozenset({"server", "process", "project", "flow", "params", "wait"})
#: arrays/objects nested deeper than this in a request body are refused (400), never a RecursionError
MAX_JSON_DEPTH = 32
_TRUE = frozenset({"1", "true", "yes", "on", ""})  # a bare ?wait means on
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_flag(raw: str) -> bool:
    """A query flag such as ``?wait=1``; anything but the usual spellings of yes and no is a 400."""
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ApiError(400, f"'wait' must be a boolean flag (1/0, true/false), got {raw!r}")


def parse_flow_request(raw: bytes, encoding: str, wait_flag: bool = False) -> dict[str, Any]:
    """Validate a POST /api/flow body; raises ApiError(400) with a message that says what is wrong."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        body = strict_json.loads(text)
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # the C scanner's own depth limit; never a 500
        raise ApiError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    if _depth_exceeds(body, MAX_JSON_DEPTH):
        raise ApiError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - FLOW_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(FLOW_FIELDS))}")
    params = body.get("params", [])
    if not isinstance(params, list):
        raise ApiError(400, "'params' must be a JSON array")
    size = len(dumps(params))
    if size > codec.MAX_FLOW_PARAMS:
        raise ApiError(400, f"'params' encode to {size} bytes; a flow start carries at most "
                            f"{codec.MAX_FLOW_PARAMS}")
    wait = body.get("wait", False)
    if not isinstance(wait, bool):
        raise ApiError(400, "'wait' must be true or false")
    return {
        "project": _name(body, "project", encoding),
        "flow": _name(body, "flow", encoding),
        "server": _int(body, "server", codec.IPSC_UNITS.start, codec.IPSC_UNITS.stop - 1),
        "process": _int(body, "process", 0, 127),
        "params": params,
        "wait": wait or wait_flag,
    }


def _name(body: dict[str, Any], field: str, encoding: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"'{field}' must be a non-empty string")
    if "\0" in value:
        raise ApiError(400, f"'{field}' must not contain NUL characters")
    try:
        size = len(value.encode(encoding))
    except UnicodeEncodeError:
        raise ApiError(400, f"'{field}' has characters that cannot be sent as {encoding}") from None
    if size > NAME_MAX_BYTES:
        raise ApiError(400, f"'{field}' is {size} bytes in {encoding}; the SmartBus field holds at most "
                            f"{NAME_MAX_BYTES}")
    return value


def _int(body: dict[str, Any], field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"'{field}' must be an integer {low}..{high} (or absent for a random IPSC)")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True if arrays/objects nest deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False
