"""Replies to a SmartBus request packet: one NOTIFY per packet, titled with the request id.

Both the oslo.messaging driver and the process-mode master answer request packets: the driver with
each call's result, the master with the error a worker could not give (crashed, killed, busy). Both
need the same rules, so they live here, over a :class:`~sbusr.transport.connection.BusConnection`
and an :class:`~sbusr.transport.exchange.Exchange` and nothing of oslo.messaging: the size limit of
a request, the title rule (an id that cannot be a NOTIFY title is answered under "null"), one NOTIFY
for a whole batch, the error sent instead of a reply too large for a NOTIFY, and the metrics of
every reply sent.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from sbusr import metrics
from sbusr.jsonrpc.encoding import dumps
from sbusr.jsonrpc.errors import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MAX_QUOTED_NAME,
    METHOD_NOT_FOUND,
    SERVER_BUSY,
    RpcError,
    cut,
    error_from_exception,
)
from sbusr.jsonrpc.protocol import (
    Call,
    Parsed,
    decode_payload,
    error_response,
    full_method,
    parse,
    reply_title,
    reply_title_for,
    result_response,
    split_method,
)
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, Packet
from sbusr.smartbus.interface import BusError
from sbusr.transport.connection import BusConnection
from sbusr.transport.exchange import Exchange
from sbusr.util.ratelog import RateLimitedLog

LOG = logging.getLogger(__name__)
#: requests answered without a method (malformed, busy): one line per caller and code every 10 s
OUTCOME_LOG = RateLimitedLog(LOG, logging.INFO, 10.0)


class Phase(enum.StrEnum):
    """Why nothing serves a request packet that arrives: the server is starting or stopping."""

    STARTING = "starting"
    STOPPING = "stopping"


class Responder:
    """Collects the replies to one request packet and sends them as one NOTIFY.

    A single call is answered as soon as it replies; a batch once every member
    with an id has replied (invalid members are answered with their errors).
    With a ``recorder``, every reply sent is counted there, under the method it answers.
    """

    __slots__ = ("_batch", "_decimal_as", "_exchange", "_lock", "_methods", "_missing", "_recorder", "_slots",
                 "_started", "_title", "_to")

    def __init__(self, exchange: Exchange, to: Address, title: str, batch: bool, size: int,
                 recorder: metrics.RequestMetrics | None = None, decimal_as: str = "number") -> None:
        self._decimal_as = decimal_as
        self._exchange = exchange
        self._to = to
        self._title = title
        self._batch = batch
        self._slots: list[dict[str, Any] | None] = [None] * size
        self._methods = [metrics.UNKNOWN_METHOD] * size if batch else []  # per slot, for the metrics
        self._missing = size
        self._lock = threading.Lock()
        self._recorder = recorder
        self._started = recorder.request_received(size) if recorder is not None else 0.0

    def fill(self, slot: int, response: dict[str, Any], method: str = metrics.UNKNOWN_METHOD) -> None:
        if not self._batch:
            body, counted = self._encode(response)
            if self._recorder is not None:
                self._record(self._recorder, method, counted)
            self._send(body)
            return
        with self._lock:
            self._slots[slot] = response
            self._methods[slot] = method
            self._missing -= 1
            done = self._missing == 0
        if done:
            answers = [r for r in self._slots if r is not None]
            if answers:
                body, counted = self._encode(answers)
                if self._recorder is not None:
                    for name, answer in zip(self._methods, counted, strict=True):
                        self._record(self._recorder, name, answer)
                self._send(body)

    def _record(self, recorder: metrics.RequestMetrics, method: str, response: dict[str, Any]) -> None:
        error = response.get("error")
        if error is None:
            recorder.request_done(method, None, self._started)
        else:
            caller = f"{self._to.unit}:{self._to.client}"
            recorder.request_done(method, error.get("code"), self._started, caller, error.get("message"))

    def _encode(self, response: Any) -> tuple[bytes, Any]:
        """The reply's bytes (or, when too large, the error's that replaces it) and what they answer.

        Replies are counted before they are sent, so whatever a caller has been answered is already
        in ``sys.stats`` and the metrics when it asks next.
        """
        body = dumps(response, self._decimal_as)
        if len(body) > codec.MAX_NOTIFY_PARAM:
            LOG.warning("reply %r to %s is %d bytes; a NOTIFY carries at most %d: answering -32603",
                        self._title, self._to, len(body), codec.MAX_NOTIFY_PARAM)
            body = too_large(response, len(body))
            too_big = error_response(None, INTERNAL_ERROR, "response too large")
            response = ([{**too_big, "id": r.get("id")} for r in response] if isinstance(response, list)
                        else {**too_big, "id": response.get("id")})
        return body, response

    def _send(self, body: bytes) -> None:
        try:
            self._exchange.send_reply(self._to, self._title, body)
        except (BusError, codec.CodecError) as exc:
            LOG.error("could not send reply %r to %s: %s", self._title, self._to, exc)


def too_large(response: dict[str, Any] | list[dict[str, Any]], size: int) -> bytes:
    """The -32603 sent instead of a reply over the NOTIFY limit; always fits.

    A batch gets one error per call while that array fits, else a single error object (id = the
    first reply's, the id the flow waits on): a fallback that is itself too big would leave the
    flow waiting for nothing. Ids always fit: they were checked to be valid titles (<= 101 bytes).
    """
    message = f"response is {size} bytes; a SmartBus NOTIFY carries at most {codec.MAX_NOTIFY_PARAM}"
    if not isinstance(response, list):
        return dumps(error_response(response.get("id"), INTERNAL_ERROR, message))
    body = dumps([error_response(r.get("id"), INTERNAL_ERROR, message) for r in response])
    if len(body) <= codec.MAX_NOTIFY_PARAM:
        return body
    first = response[0].get("id") if response else None
    body = dumps(error_response(
        first, INTERNAL_ERROR,
        f"batch response is {size} bytes; a SmartBus NOTIFY carries at most {codec.MAX_NOTIFY_PARAM} and "
        f"even one error per call ({len(response)} calls) does not fit: send fewer calls per batch"))
    if len(body) <= codec.MAX_NOTIFY_PARAM:
        return body
    return dumps(error_response(None, INTERNAL_ERROR, message))  # cannot happen


class Answer:
    """The one answer one call of a request packet gets: its result, or an error given early (a
    deadline, a dead worker); whichever comes first is sent, the other dropped."""

    __slots__ = ("_debug", "_responder", "_slot", "_unanswered", "exchange", "full_method", "request_id")

    def __init__(self, full_method: str, request_id: Any, responder: Responder | None, slot: int,
                 exchange: Exchange, debug: bool) -> None:
        self.full_method = full_method
        self.request_id = request_id
        self.exchange = exchange
        self._responder = responder  # None: a notification, run and answer nothing
        self._slot = slot
        self._debug = debug
        self._unanswered = threading.Lock()  # held once answered: a one-shot token

    def give(self, result: Any, error: BaseException | None) -> bool:
        """Answer with ``result`` or, when given, ``error``; False if already answered."""
        if not self._unanswered.acquire(blocking=False):
            return False
        code, text = 0, ""
        responder = self._responder
        if error is not None:
            code, text, data = error_from_exception(error, self._debug)
            if code == METHOD_NOT_FOUND:  # oslo only knows the last dotted part
                text = f"Method not found: {cut(self.full_method, MAX_QUOTED_NAME)}"
            if responder is not None:
                responder.fill(self._slot, error_response(self.request_id, code, text, data),
                               self.full_method)
        elif responder is not None:
            responder.fill(self._slot, result_response(self.request_id, result), self.full_method)
        self.exchange.call_done(self.full_method, code, text, replied=responder is not None)
        return True


class Replies:
    """Opens request packets and answers them, for one bus identity and one server's reply options.

    ``connection`` gives the connection a reply goes out on when no exchange is given. ``metrics``
    (None until a server counts requests) gets every reply sent. ``phase`` says what a packet gets
    while nothing serves (:meth:`answer_idle`, a connection's fallback sink).
    """

    def __init__(self, conf: cfg.ConfigOpts, encoding: str,
                 connection: Callable[[], BusConnection | None]) -> None:
        # read per request: look them up once (oslo.config lookups are not free)
        self.debug = bool(getattr(conf, "debug", False) or conf.server.expose_tracebacks)
        self.decimal_as: str = conf.server.decimal_as
        self.max_request_size: int = conf.smartbus.max_request_size
        self.encoding = encoding
        # ASCII text keeps its length in the wire encoding (GBK, UTF-8 ...): titles can be checked cheaply
        self._ascii_titles = "Az09-_".encode(encoding, errors="replace") == b"Az09-_"
        self._connection = connection
        self.metrics: metrics.RequestMetrics | None = None
        self.phase = Phase.STARTING

    def open(self, packet: Packet, exchange: Exchange | None = None) -> list[tuple[Call, Answer]]:
        """Parse one request packet; invalid calls are answered here, the valid ones returned with
        the answer each owes.

        ``exchange`` (default: a plain one on the connection) carries the reply and learns when
        every returned call has been answered.
        """
        if exchange is None:
            exchange = Exchange(self._connection())
        parsed = self._decode(packet)
        if not parsed.items:
            exchange.expect(0)
            return []
        items = [self._titled(item) for item in parsed.items]
        answerable = [item for item in items if not (isinstance(item, Call) and item.is_notification)]
        responder = None
        title = reply_title_for(items)  # after the title rule: a bad id is answered under "null"
        if title is not None:
            responder = Responder(exchange, packet.src, title, parsed.is_batch, len(answerable),
                                  self.metrics, self.decimal_as)
        calls: list[tuple[Call, Answer]] = []
        slot = 0
        for item in items:
            if not isinstance(item, Call):
                assert responder is not None
                error = item["error"]
                OUTCOME_LOG.log((packet.src, error["code"]), "request from %s answered %d: %s", packet.src,
                                error["code"], cut(error["message"], MAX_QUOTED_NAME))
                exchange.note("", error["code"], error["message"])
                responder.fill(slot, item)
                slot += 1
                continue
            method = full_method(*split_method(item.method))  # as oslo's namespace and method give it
            if item.is_notification:
                calls.append((item, Answer(method, None, None, 0, exchange, self.debug)))
            else:
                calls.append((item, Answer(method, item.id, responder, slot, exchange, self.debug)))
                slot += 1
        # after the invalid members' answers (a packet with no call closes here, reply included) and
        # before any call runs: the calls are only delivered once this returns
        exchange.expect(len(calls))
        return calls

    def reject(self, packet: Packet, code: int, message: str, exchange: Exchange | None = None) -> None:
        """Answer every call in ``packet`` with one error (while starting, shutting down, or full)."""
        self.answer_for(packet, lambda _method: RpcError(code, message), exchange)

    def answer_for(self, packet: Packet, error_for: Callable[[str], BaseException],
                   exchange: Exchange | None = None) -> int:
        """Answer every call in ``packet`` with ``error_for(its full method name)``; the number of
        calls answered. The process-mode master uses it when a worker cannot answer."""
        calls = self.open(packet, exchange)
        for _call, answer in calls:
            answer.give(None, error_for(answer.full_method))
        return len(calls)

    def answer_idle(self, packet: Packet) -> None:
        """A request that arrived while nothing serves: -32002 "starting" or "shutting down"."""
        text = "server is starting" if self.phase is Phase.STARTING else "server is shutting down"
        self.reject(packet, SERVER_BUSY, text)

    def _decode(self, packet: Packet) -> Parsed:
        if len(packet.body) > self.max_request_size:
            return Parsed(False, [error_response(
                None, INVALID_REQUEST,
                f"request is {len(packet.body)} bytes; the limit is {self.max_request_size}")])
        try:
            text = decode_payload(packet.body, self.encoding)
        except RpcError as exc:
            return Parsed(False, [error_response(None, exc.code, exc.message)])
        return parse(text)

    def _titled(self, item: Call | dict[str, Any]) -> Call | dict[str, Any]:
        """Apply the title rule: an id that cannot be a NOTIFY title is never run, and answered under "null".

        The flow waits on the id as the NOTIFY title (char[102] in the wire encoding); such a reply could
        not be sent at all, so the caller gets -32600 with id null, under the title "null".
        """
        if isinstance(item, Call):
            if item.is_notification:
                return item
            title = reply_title(item.id)
            if (self._ascii_titles and len(title) <= codec.MAX_NOTIFY_TITLE and title.isascii()
                    and "\0" not in title):
                return item  # the common case, without encoding the title
            problem = codec.notify_title_problem(title, self.encoding)
            if problem is None:
                return item
            return error_response(
                None, INVALID_REQUEST,
                f"Invalid Request: id cannot be a SmartBus notify title ({problem}; "
                f"at most {codec.MAX_NOTIFY_TITLE} bytes in {self.encoding}, no NUL)")
        if item.get("id") is not None and codec.notify_title_problem(reply_title(item["id"]), self.encoding):
            return {**item, "id": None}
        return item
