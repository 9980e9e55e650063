"""The driver's request path on its own: any bytes a flow may send become calls or JSON-RPC errors."""

from __future__ import annotations

import json

import oslo_messaging
from hypothesis import example, given, settings
from hypothesis import strategies as st
from oslo_config import cfg

from sbusr import opts
from sbusr.driver_smartbus import SmartBusDriver, SmartBusIncomingMessage
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address

CALLER = Address(0, 3, codec.CLIENT_TYPE_IPSC)


class RecordingConnection:
    """Stands in for BusConnection: records the replies the driver sends."""

    def __init__(self) -> None:
        self.replies: list[tuple[Address, str, bytes]] = []

    def send_reply(self, to: Address, title: str, body: bytes) -> None:
        self.replies.append((to, title, body))


def make_driver() -> tuple[SmartBusDriver, RecordingConnection]:
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    driver = SmartBusDriver(conf, oslo_messaging.TransportURL.parse(conf, "smartbus://127.0.0.1:1/"))
    conn = RecordingConnection()
    driver._connection = conn  # never connect: the request path only needs send_reply
    return driver, conn


def packet(body: bytes) -> codec.Packet:
    return codec.decode_packet(codec.encode_data(CALLER, Address(19, 1, -1), 1, codec.CMDTYPE_RPC, body))


def assert_valid_response(obj: object) -> None:
    assert isinstance(obj, dict) and obj.get("jsonrpc") == "2.0" and "id" in obj, obj
    assert ("result" in obj) != ("error" in obj), obj
    if "error" in obj:
        error = obj["error"]
        assert isinstance(error["code"], int) and isinstance(error["message"], str), obj


def answer_all(messages: list[SmartBusIncomingMessage]) -> None:
    """Reply as the RPCServer would, so batches complete."""
    for message in messages:
        message.reply(reply={"echo": message.message["method"]})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
request_like = st.fixed_dictionaries(
    {}, optional={"jsonrpc": st.sampled_from(["2.0", "1.0", 2]), "id": json_values,
                  "method": st.text(max_size=20) | json_values, "params": json_values})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())
       | request_like.map(lambda v: json.dumps(v).encode())
       | st.lists(request_like, max_size=4).map(lambda v: json.dumps(v).encode()))
@example(b'{"id": ""}')  # found by this test: an empty id once made an empty NOTIFY title
@example(b'[{"jsonrpc": "2.0", "id": "", "method": "a"}]')
def test_any_request_bytes_become_calls_or_valid_errors(body):
    driver, conn = make_driver()
    messages = driver.incoming_from_packet(packet(body))
    answer_all(messages)
    for to, title, raw in conn.replies:
        assert to == CALLER and title  # never an empty title (the vendor library refuses those)
        reply = json.loads(raw)
        for item in reply if isinstance(reply, list) else [reply]:
            assert_valid_response(item)
    assert len(conn.replies) <= 1  # one NOTIFY per request packet at most


def test_oversized_request_is_refused_with_invalid_request():
    driver, conn = make_driver()
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "echo",
                       "params": ["x" * driver.max_request_size]}).encode()
    assert driver.incoming_from_packet(packet(body)) == []
    [(_, title, raw)] = conn.replies
    assert title == "null" and json.loads(raw)["error"]["code"] == -32600


def test_message_is_answered_exactly_once():
    driver, conn = make_driver()
    [message] = driver.incoming_from_packet(packet(b'{"jsonrpc": "2.0", "id": 5, "method": "slow"}'))
    assert message.answer_early(RuntimeError("too slow")) is True
    message.reply(reply="late result")  # the method finished after all: dropped
    assert message.answer_early(RuntimeError("again")) is False
    [(_, title, raw)] = conn.replies
    assert title == "5" and json.loads(raw)["error"]["message"] == "too slow"
