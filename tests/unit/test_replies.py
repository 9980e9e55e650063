"""Request packets are answered with nothing but a connection: the process-mode master's case."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from sbusr.jsonrpc.errors import SERVER_BUSY, WorkerCrashed
from sbusr.metrics.requests import RequestMetrics
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address
from sbusr.transport.exchange import Exchange
from sbusr.transport.replies import Phase, Replies, Responder
from tests.helpers.recording import CALLER, RecordingConnection, default_conf


def make_replies() -> tuple[Replies, RecordingConnection]:
    conf = default_conf()
    conn = RecordingConnection()
    return Replies(conf, "gbk", lambda: conn), conn  # type: ignore[arg-type,return-value]


def packet(body: bytes) -> codec.Packet:
    return codec.decode_packet(codec.encode_data(CALLER, Address(19, 1, -1), 1, codec.CMDTYPE_RPC, body))


def test_reject_answers_every_call_of_a_batch_in_one_notify_and_skips_notifications():
    replies, conn = make_replies()
    body = json.dumps([{"jsonrpc": "2.0", "id": "a", "method": "x.y"},
                       {"jsonrpc": "2.0", "method": "quiet"},
                       {"jsonrpc": "2.0", "id": 2, "method": "z"}]).encode()
    replies.reject(packet(body), SERVER_BUSY, "server busy, try again later")
    [(to, title, raw)] = conn.replies
    assert (to, title) == (CALLER, "a")
    assert [(r["id"], r["error"]["code"], r["error"]["message"]) for r in json.loads(raw)] == [
        ("a", SERVER_BUSY, "server busy, try again later"), (2, SERVER_BUSY, "server busy, try again later")]


def test_answer_for_names_each_call_and_closes_the_exchange():
    replies, conn = make_replies()
    closed: list[bool] = []
    exchange = Exchange(conn)  # type: ignore[arg-type]
    exchange.on_close(lambda: closed.append(True))
    body = b'{"jsonrpc": "2.0", "id": 7, "method": "a.b.c"}'
    answered = replies.answer_for(packet(body), lambda method: WorkerCrashed(f"{method} died"), exchange)
    assert answered == 1 and closed == [True]
    [(_, title, raw)] = conn.replies
    assert title == "7" and json.loads(raw)["error"]["message"] == "a.b.c died"


def test_an_id_that_cannot_be_a_title_is_answered_under_null_and_never_opened():
    replies, conn = make_replies()
    body = json.dumps({"jsonrpc": "2.0", "id": "x" * 200, "method": "echo"}).encode()
    assert replies.open(packet(body)) == []
    [(_, title, raw)] = conn.replies
    assert title == "null" and json.loads(raw)["error"]["code"] == -32600


def test_idle_answers_follow_the_phase():
    replies, conn = make_replies()
    replies.answer_idle(packet(b'{"jsonrpc": "2.0", "id": 1, "method": "m"}'))
    replies.phase = Phase.STOPPING
    replies.answer_idle(packet(b'{"jsonrpc": "2.0", "id": 2, "method": "m"}'))
    assert [json.loads(raw)["error"]["message"] for _, _, raw in conn.replies] == [
        "server is starting", "server is shutting down"]


class CountingOnSend(RecordingConnection):
    """Notes what the metrics held at the moment each reply was sent."""

    def __init__(self, recorder: RequestMetrics) -> None:
        super().__init__()
        self.recorder = recorder
        self.counted_at_send: list[int] = []

    def send_reply(self, to: Address, title: str, body: bytes) -> None:
        self.counted_at_send.append(self.recorder.snapshot()["calls"])
        super().send_reply(to, title, body)


def test_a_reply_is_counted_before_it_is_sent():
    """A caller that asks sys.stats right after its answer finds its call counted."""
    recorder = RequestMetrics(CollectorRegistry())
    conn = CountingOnSend(recorder)
    single = Responder(Exchange(conn), CALLER, "1", batch=False, size=1, recorder=recorder)  # type: ignore[arg-type]
    single.fill(0, {"jsonrpc": "2.0", "id": 1, "result": 3}, "add")
    batch = Responder(Exchange(conn), CALLER, "a", batch=True, size=2, recorder=recorder)  # type: ignore[arg-type]
    batch.fill(0, {"jsonrpc": "2.0", "id": "a", "result": 1}, "add")
    batch.fill(1, {"jsonrpc": "2.0", "id": "b", "error": {"code": -32602, "message": "bad"}}, "add")
    assert conn.counted_at_send == [1, 3]
    assert [title for _, title, _ in conn.replies] == ["1", "a"]
