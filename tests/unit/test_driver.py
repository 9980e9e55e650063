"""The driver on its own: any bytes a flow may send become calls or JSON-RPC errors; each topic's
send side maps to its BusConnection call."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import oslo_messaging
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from oslo_config import cfg

from sbusr import opts
from sbusr.driver_smartbus import SmartBusDriver, SmartBusIncomingMessage
from sbusr.jsonrpc.errors import INTERNAL_ERROR
from sbusr.jsonrpc.protocol import POSITIONAL_KEY
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address
from sbusr.smartbus.interface import BusError, FlowTimeout
from sbusr.transport.connection import ReplyTimeout
from sbusr.transport.flows import FlowRejected, FlowStarted
from sbusr.transport.peers import Peer
from sbusr.transport.senders import RemoteError
from tests.helpers.recording import CALLER, RecordingConnection, default_conf


def make_driver() -> tuple[SmartBusDriver, RecordingConnection]:
    conf = default_conf()
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
                       "params": ["x" * driver.replies.max_request_size]}).encode()
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


# ---------------------------------------------------------------------------- the send side


class SendingConnection:
    """Stands in for BusConnection's sender side: records calls, answers with ``reply``, raises ``error``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.error: BaseException | None = None
        self.reply: Callable[[dict], bytes] = lambda request: json.dumps(
            {"jsonrpc": "2.0", "id": request["id"], "result": "done"}).encode()

    def _record(self, name: str, *args: object, **kwargs: object) -> None:
        self.calls.append((name, args, kwargs))
        if self.error is not None:
            raise self.error

    def start_flow(self, project: str, flow: str, params: list, **kwargs: object) -> FlowStarted:
        self._record("start_flow", project, flow, params, **kwargs)
        return FlowStarted(3, 4, 77, 1, "ok", [1] if kwargs["wait"] else None)

    def call(self, unit: int, client: int, request_id: str, body: bytes, timeout: float | None) -> bytes:
        self._record("call", unit, client, request_id, json.loads(body), timeout)
        return self.reply(json.loads(body))

    def send_request(self, unit: int, client: int, body: bytes) -> None:
        self._record("send_request", unit, client, json.loads(body))

    def peers(self) -> list[Peer]:
        return [Peer(3, 4, codec.CLIENT_TYPE_IPSC, 0, "ipsc")]

    def status(self) -> dict:
        return {"connected": True}


@pytest.fixture
def sending() -> Iterator[tuple[oslo_messaging.Transport, SendingConnection]]:
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    transport = oslo_messaging.get_rpc_transport(conf, url="smartbus://127.0.0.1:1/")
    conn = SendingConnection()
    transport._driver._connection = conn  # never connect: the send side only calls the connection
    yield transport, conn
    transport._driver._connection = None
    transport.cleanup()


def client(transport: oslo_messaging.Transport, timeout: float | None = None, **target: str):
    return oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(**target), timeout=timeout)


def test_ipsc_topic_starts_a_flow(sending):
    transport, conn = sending
    flows = client(transport, 7.0, topic="ipsc")
    answer = flows.call({}, "start_flow", project="P", flow="F", params=[1, "x"], unit=3, client=4, wait=True,
                        ack_timeout=2, result_timeout=9)
    assert answer == {"unit": 3, "client": 4, "invoke_id": 77, "ack": 1, "message": "ok", "result": [1]}
    assert conn.calls[-1] == ("start_flow", ("P", "F", [1, "x"]), {
        "unit": 3, "client": 4, "wait": True, "ack_timeout": 2.0, "result_timeout": 9.0})
    answer = flows.call({}, "start_flow", project="P", flow="F")  # no wait: no result; the RPC timeout
    assert "result" not in answer
    assert conn.calls[-1] == ("start_flow", ("P", "F", []), {
        "unit": None, "client": None, "wait": False, "ack_timeout": 7.0, "result_timeout": 7.0})


def test_a_flow_timeout_is_a_messaging_timeout_and_a_rejection_stays_itself(sending):
    transport, conn = sending
    flows = client(transport, 7.0, topic="ipsc")
    conn.error = FlowTimeout("IPSC 3/4 did not acknowledge the flow within 7 s", codec.ERR_TIMEOUT)
    with pytest.raises(oslo_messaging.MessagingTimeout, match="did not acknowledge the flow within 7 s"):
        flows.call({}, "start_flow", project="P", flow="F")
    conn.error = FlowRejected(-3, "no such flow", Address(3, 4, codec.CLIENT_TYPE_IPSC))
    with pytest.raises(FlowRejected) as err:
        flows.call({}, "start_flow", project="P", flow="F")
    assert err.value.ack == -3


def test_bus_topic_answers_from_the_connection(sending):
    transport, _conn = sending
    bus = client(transport, topic="bus")
    assert bus.call({}, "peers") == [{"unit": 3, "client": 4, "type": codec.CLIENT_TYPE_IPSC,
                                      "access_point": 0, "add_info": "ipsc"}]
    assert bus.call({}, "status") == {"connected": True}
    with pytest.raises(BusError, match="unknown bus query"):
        bus.call({}, "nosuch")


def test_other_topics_call_the_sbusr_server_named_by_the_target(sending):
    transport, conn = sending
    system = client(transport, 5.0, topic="sbusr", server="19:1", namespace="sys")
    assert system.call({}, "reload") == "done"
    name, (unit, client_id, request_id, request, timeout), _ = conn.calls[-1]
    assert (name, unit, client_id, timeout) == ("call", 19, 1, 5.0)
    assert request == {"jsonrpc": "2.0", "id": request_id, "method": "sys.reload", "params": {}}
    system.call({}, "echo", **{POSITIONAL_KEY: ["a", 1]})
    assert conn.calls[-1][1][3]["params"] == ["a", 1]  # positional params travel as a JSON array
    system.cast({}, "ping")
    ping = {"jsonrpc": "2.0", "method": "sys.ping", "params": {}}  # a cast: no id, nothing awaited
    assert conn.calls[-1] == ("send_request", (19, 1, ping), {})


def test_sbusr_call_errors(sending):
    transport, conn = sending
    system = client(transport, 5.0, topic="sbusr", server="19:1", namespace="sys")
    conn.reply = lambda r: json.dumps({"id": r["id"], "error": {"code": -32000, "message": "no",
                                                                "data": 1}}).encode()
    with pytest.raises(RemoteError) as err:
        system.call({}, "reload")
    assert (err.value.code, err.value.rpc_message, err.value.data) == (-32000, "no", 1)
    conn.reply = lambda r: b"not json"
    with pytest.raises(RemoteError) as err:
        system.call({}, "reload")
    assert err.value.code == INTERNAL_ERROR and "malformed reply" in str(err.value)
    conn.error = ReplyTimeout("no reply")
    with pytest.raises(oslo_messaging.MessagingTimeout, match=r"no reply from sbusr 19:1 to sys\.reload"):
        system.call({}, "reload")
    with pytest.raises(BusError, match="unit:client"):
        client(transport, 5.0, topic="sbusr", server="nowhere").call({}, "ping")
