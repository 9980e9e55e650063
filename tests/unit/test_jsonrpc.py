"""JSON-RPC framing: parsing, responses, exception mapping and encoding."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import pickle
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oslo_messaging.rpc import dispatcher as rpc_dispatcher

from sbusr.jsonrpc import encoding, errors, protocol
from sbusr.jsonrpc.protocol import Call


def single(text: str):
    parsed = protocol.parse(text)
    assert not parsed.is_batch
    assert len(parsed.items) == 1
    return parsed.items[0]


def error_code(item) -> int:
    assert isinstance(item, dict), item
    return item["error"]["code"]


# --------------------------------------------------------------------------- parse

def test_parse_valid_call_positional():
    call = single('{"jsonrpc": "2.0", "id": "123456", "method": "echo", "params": ["Hello"]}')
    assert call == Call(id="123456", is_notification=False, method="echo", params=["Hello"])
    assert (call.namespace, call.name) == (None, "echo")


def test_parse_named_params_and_namespace():
    call = single('{"jsonrpc": "2.0", "id": 7, "method": "weather.sk", "params": {"code": "101010100"}}')
    assert call.params == {"code": "101010100"}
    assert (call.namespace, call.name) == ("weather", "sk")


def test_parse_missing_jsonrpc_is_accepted_for_original_sbusr_compatibility():
    call = single('{"method": "add", "params": [1, 2], "id": 1}')
    assert isinstance(call, Call) and call.params == [1, 2]


def test_parse_missing_params_means_no_arguments():
    assert single('{"jsonrpc": "2.0", "id": 1, "method": "sys.ping"}').params == []


def test_parse_notification_has_no_id_member():
    call = single('{"jsonrpc": "2.0", "method": "warnlog", "params": ["x"]}')
    assert call.is_notification and call.id is None
    # "id": null is a request whose reply carries id null, not a notification
    assert not single('{"jsonrpc": "2.0", "method": "warnlog", "id": null}').is_notification


def test_parse_error_for_invalid_json():
    item = single('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert error_code(item) == errors.PARSE_ERROR and item["id"] is None


@pytest.mark.parametrize("text, why", [
    ('{"jsonrpc": "2.0", "id": 1e999, "method": "add"}', "1e999 is not a finite number"),
    ('{"jsonrpc": "2.0", "id": 1, "method": "add", "params": [-2E+400]}', "-2E+400 is not a finite number"),
    ('{"jsonrpc": "2.0", "id": Infinity, "method": "add"}', "Infinity is not JSON"),
    ('{"jsonrpc": "2.0", "id": 1, "method": "add", "params": [NaN]}', "NaN is not JSON"),
    ('[{"jsonrpc": "2.0", "id": 1, "method": "add", "params": {"x": -Infinity}}]', "-Infinity is not JSON"),
])
def test_parse_error_names_a_number_no_reply_could_carry(text, why):
    item = single(text)
    assert error_code(item) == errors.PARSE_ERROR and item["id"] is None
    assert item["error"]["message"] == f"Parse error: {why}"
    assert encoding.dumps(item)  # the error itself can be sent


@pytest.mark.parametrize("bad_id", [math.inf, -math.inf, math.nan])
def test_a_reply_to_an_id_json_cannot_carry_is_sent_with_id_null(bad_id):
    assert not protocol.valid_id(bad_id)
    sent = json.loads(encoding.dumps(protocol.error_response(bad_id, errors.INVALID_REQUEST, "x")))
    assert sent["id"] is None and sent["error"]["code"] == errors.INTERNAL_ERROR


@pytest.mark.parametrize("text", ['1', '"text"', 'null', 'true', '[]'])
def test_parse_invalid_request_for_non_object(text):
    item = single(text)
    assert error_code(item) == errors.INVALID_REQUEST and item["id"] is None


@pytest.mark.parametrize("obj, expected_id", [
    ({"jsonrpc": "1.0", "id": 5, "method": "add"}, 5),
    ({"jsonrpc": 2.0, "id": 5, "method": "add"}, 5),
    ({"jsonrpc": "2.0", "id": 5}, 5),
    ({"jsonrpc": "2.0", "id": 5, "method": ""}, 5),
    ({"jsonrpc": "2.0", "id": 5, "method": 1}, 5),
    ({"jsonrpc": "2.0", "id": 5, "method": "add", "params": "bar"}, 5),
    ({"jsonrpc": "2.0", "id": 5, "method": "add", "params": 3}, 5),
    ({"jsonrpc": "2.0", "id": {"a": 1}, "method": "add"}, None),
    ({"jsonrpc": "2.0", "id": [1], "method": "add"}, None),
    ({"jsonrpc": "2.0", "id": True, "method": "add"}, None),
])
def test_parse_invalid_request(obj, expected_id):
    item = single(json.dumps(obj))
    assert error_code(item) == errors.INVALID_REQUEST
    assert item["id"] == expected_id


@pytest.mark.parametrize("method", [
    "__class__", "_private", "a._b", "a..b", ".a", "a.", "foo bar", "1abc", "a.b-c", "weather.__init__",
])
def test_parse_method_not_found_for_undispatchable_names(method):
    item = single(json.dumps({"jsonrpc": "2.0", "id": "x", "method": method}))
    assert error_code(item) == errors.METHOD_NOT_FOUND and item["id"] == "x"


def test_parse_undispatchable_notification_gets_no_reply():
    assert protocol.parse('{"jsonrpc": "2.0", "method": "__class__"}').items == []


def test_parse_batch_mixed():
    batch = [
        {"jsonrpc": "2.0", "method": "sum", "params": [1, 2, 4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        1,
        {"jsonrpc": "2.0", "method": "_x", "id": "9"},
        {"jsonrpc": "2.0", "method": "_x"},
    ]
    parsed = protocol.parse(json.dumps(batch))
    assert parsed.is_batch
    items = parsed.items
    assert len(items) == 7  # the undispatchable notification vanishes
    assert [type(i).__name__ for i in items] == ["Call", "Call", "Call", "dict", "Call", "dict", "dict"]
    assert items[1].is_notification
    assert error_code(items[3]) == errors.INVALID_REQUEST
    assert error_code(items[5]) == errors.INVALID_REQUEST
    assert error_code(items[6]) == errors.METHOD_NOT_FOUND and items[6]["id"] == "9"


def test_parse_batch_of_invalid_elements():
    parsed = protocol.parse("[1, 2]")
    assert parsed.is_batch
    assert [error_code(i) for i in parsed.items] == [errors.INVALID_REQUEST] * 2


def test_split_method():
    assert protocol.split_method("a.b.c") == ("a.b", "c")
    assert protocol.split_method("add") == (None, "add")
    assert protocol.split_method("mymodule.MyClass.mymethod") == ("mymodule.MyClass", "mymethod")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_raises_on_text(text):
    parsed = protocol.parse(text)
    assert parsed.items or parsed.is_batch or text  # something came back, or the input was a notification


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)
request_like = st.fixed_dictionaries(
    {}, optional={"jsonrpc": st.one_of(st.just("2.0"), json_values), "id": json_values,
                  "method": st.one_of(st.sampled_from(["add", "a.b", "_x", "", "a..b"]), json_values),
                  "params": json_values})


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, request_like, st.lists(st.one_of(request_like, json_values), max_size=5)))
def test_parse_never_raises_on_json_values(value):
    parsed = protocol.parse(json.dumps(value))
    for item in parsed.items:
        if isinstance(item, dict):
            assert item["jsonrpc"] == "2.0" and "error" in item
            encoding.dumps(item)
        else:
            assert isinstance(item.method, str) and isinstance(item.params, (list, dict))


def test_parse_deeply_nested_json_is_an_error_not_a_crash():
    item = single("[" * 100000 + "]" * 100000)
    assert error_code(item) in (errors.PARSE_ERROR, errors.INVALID_REQUEST)


# --------------------------------------------------------------------------- decode_payload

def test_decode_payload_utf8_and_bom_and_nul_padding():
    text = '{"method": "echo", "params": ["你好"]}'
    assert protocol.decode_payload(text.encode("utf-8")) == text
    assert protocol.decode_payload(b"\xef\xbb\xbf" + text.encode("utf-8")) == text
    assert protocol.decode_payload(text.encode("utf-8") + b"\x00\x00") == text


def test_decode_payload_gbk_fallback():
    text = '{"method": "echo", "params": ["北京天气"]}'
    data = text.encode("gbk")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert protocol.decode_payload(data) == text
    assert single(protocol.decode_payload(data)).params == ["北京天气"]


def test_decode_payload_undecodable_is_parse_error():
    with pytest.raises(errors.ParseError) as info:
        protocol.decode_payload(b"\xff\xff\xff", fallback_encoding="ascii")
    assert info.value.code == errors.PARSE_ERROR
    with pytest.raises(errors.ParseError):
        protocol.decode_payload(b"\xff\xfe", fallback_encoding="no-such-codec")


# --------------------------------------------------------------------------- responses / errors

def test_result_and_error_response_shapes():
    assert protocol.result_response(1, 3) == {"jsonrpc": "2.0", "id": 1, "result": 3}
    assert protocol.error_response("a", -32601, "Method not found") == {
        "jsonrpc": "2.0", "id": "a", "error": {"code": -32601, "message": "Method not found"}}
    assert protocol.error_response(None, -1, "m", {"k": 1})["error"]["data"] == {"k": 1}


def test_error_classes_codes_and_pickling():
    cases = [(errors.CallTimeout, -32001), (errors.ServerBusy, -32002), (errors.WorkerCrashed, -32003),
             (errors.InvalidParams, -32602), (errors.ParseError, -32700), (errors.InvalidRequest, -32600),
             (errors.MethodNotFound, -32601), (errors.InternalError, -32603)]
    for cls, code in cases:
        err = cls("boom", {"x": 1})
        assert (err.code, err.message, err.data, str(err)) == (code, "boom", {"x": 1}, "boom")
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is cls and (copy.code, copy.message, copy.data) == (code, "boom", {"x": 1})
    err = errors.RpcError(-32050, "custom", [1])
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.code, copy.message, copy.data) == (-32050, "custom", [1])


def test_error_from_exception_no_such_method_and_unsupported_version():
    assert errors.error_from_exception(rpc_dispatcher.NoSuchMethod("sk")) == (
        -32601, "Method not found: sk", None)
    code, message, _ = errors.error_from_exception(rpc_dispatcher.UnsupportedVersion("1.0", method="system"))
    assert code == -32601 and "system" in message


def test_error_from_exception_rpc_errors_keep_their_code():
    assert errors.error_from_exception(errors.InvalidParams("bad")) == (-32602, "bad", None)
    mine = errors.RpcError(-32077, "mine", {"d": 1})
    assert errors.error_from_exception(mine) == (-32077, "mine", {"d": 1})
    assert errors.error_from_exception(errors.CallTimeout())[0] == -32001


def test_error_from_exception_generic_exception():
    class Boom(Exception):
        pass

    try:
        raise Boom("it broke")
    except Boom as exc:
        code, message, data = errors.error_from_exception(exc)
        assert (code, message) == (-32000, "it broke")
        assert data == {"type": f"{__name__}.test_error_from_exception_generic_exception.<locals>.Boom"}
        code, message, data = errors.error_from_exception(exc, debug=True)
        assert "Traceback" in data["traceback"] and "it broke" in data["traceback"]
    assert errors.error_from_exception(KeyError())[1] == "KeyError"
    assert errors.error_from_exception(ValueError())[2] == {"type": "builtins.ValueError"}


def test_error_from_exception_unwraps_expected_exception_and_exc_info():
    try:
        raise errors.InvalidParams("wrapped")
    except errors.InvalidParams:
        wrapped = rpc_dispatcher.ExpectedException()
    assert errors.error_from_exception(wrapped) == (-32602, "wrapped", None)
    exc = RuntimeError("x")
    assert errors.error_from_exception((RuntimeError, exc, None))[:2] == (-32000, "x")


def test_error_from_exception_survives_broken_str():
    class Weird(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert errors.error_from_exception(Weird())[:2] == (-32000, "Weird")


# --------------------------------------------------------------------------- dumps

class Color(enum.Enum):
    RED = "red"
    ONE = 1


@dataclasses.dataclass
class Point:
    x: int
    y: datetime.date


class HasJson:
    def __json__(self):
        return {"custom": [1, 2]}


class Plain:
    def __str__(self):
        return "plain!"


def roundtrip(value):
    data = encoding.dumps(protocol.result_response(1, value))
    assert isinstance(data, bytes)
    data.decode("ascii")  # pure ASCII whatever the content
    return json.loads(data)["result"]


@pytest.mark.parametrize("value, expected", [
    (datetime.datetime(2024, 1, 2, 3, 4, 5, 600000), "2024-01-02T03:04:05.600000"),
    (datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.UTC), "2024-01-02T03:04:00+00:00"),
    (datetime.date(2024, 1, 2), "2024-01-02"),
    (datetime.time(23, 59, 1), "23:59:01"),
    (decimal.Decimal("42"), 42),
    (decimal.Decimal("1.00"), 1),
    (decimal.Decimal("1.25"), 1.25),
    (decimal.Decimal("12345678901234567890"), 12345678901234567890),
    (b"hello", "hello"),
    (bytearray("北京", "utf-8"), "北京"),
    (b"\xff\x00\x01", "/wAB"),
    ({3, 1, 2}, [1, 2, 3]),
    (frozenset({"b", "a"}), ["a", "b"]),
    ((1, (2, 3)), [1, [2, 3]]),
    (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
    (Color.RED, "red"),
    (Color.ONE, 1),
    (HasJson(), {"custom": [1, 2]}),
    (Point(1, datetime.date(2020, 5, 6)), {"x": 1, "y": "2020-05-06"}),
    ({1: "int key", None: "none", datetime.date(2020, 1, 1): "date"},
     {"1": "int key", "null": "none", "2020-01-01": "date"}),
    ("北京", "北京"),
])
def test_dumps_special_types(value, expected):
    assert roundtrip(value) == expected


@pytest.mark.parametrize("value, message", [
    (decimal.Decimal("NaN"), "result contains the Decimal NaN, which JSON cannot carry"),
    (decimal.Decimal("-Infinity"), "result contains the Decimal -Infinity, which JSON cannot carry"),
    (float("nan"), "result contains the number nan, which JSON cannot carry"),
    ([1.5, {"k": float("-inf")}], "result contains the number -inf, which JSON cannot carry"),
    (Plain(), "result of type Plain is not JSON"),
    (object(), "result of type object is not JSON"),
    ((n for n in range(3)), "result of type generator is not JSON"),
])
def test_dumps_values_json_cannot_carry_are_internal_errors(value, message):
    reply = json.loads(encoding.dumps(protocol.result_response(5, value)))
    assert reply == {"jsonrpc": "2.0", "id": 5, "error": {"code": errors.INTERNAL_ERROR, "message": message}}


def test_dumps_is_compact_ascii():
    data = encoding.dumps(protocol.result_response("id", {"a": [1, 2], "t": "北京"}))
    assert data == b'{"jsonrpc":"2.0","id":"id","result":{"a":[1,2],"t":"\\u5317\\u4eac"}}'


def test_dumps_circular_value_becomes_internal_error():
    loop: list = []
    loop.append(loop)
    reply = json.loads(encoding.dumps(protocol.result_response(77, loop)))
    assert reply["id"] == 77 and reply["error"]["code"] == errors.INTERNAL_ERROR


def test_dumps_failing_json_hook_becomes_internal_error():
    class Bad:
        def __json__(self):
            raise RuntimeError("nope")

    reply = json.loads(encoding.dumps(protocol.result_response("q", Bad())))
    assert reply["id"] == "q" and reply["error"]["code"] == errors.INTERNAL_ERROR


def test_dumps_batch_isolates_a_bad_element():
    loop: dict = {}
    loop["self"] = loop
    replies = json.loads(encoding.dumps([protocol.result_response(1, "ok"),
                                         protocol.result_response(2, loop)]))
    assert replies[0] == {"jsonrpc": "2.0", "id": 1, "result": "ok"}
    assert replies[1]["id"] == 2 and replies[1]["error"]["code"] == errors.INTERNAL_ERROR


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary() | st.decimals()
    | st.datetimes() | st.uuids(),
    lambda children: st.lists(children, max_size=4) | st.frozensets(st.integers(), max_size=4)
    | st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), children, max_size=4),
    max_leaves=20))
def test_dumps_never_raises(value):
    reply = json.loads(encoding.dumps(protocol.result_response(1, value)))
    assert reply["id"] == 1 and ("result" in reply or "error" in reply)
