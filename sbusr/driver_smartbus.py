"""oslo.messaging transport driver for Hesong SmartBus (``smartbus://`` URLs).

Listener side: SmartBus data packets with cmdtype 211 carry JSON-RPC 2.0
requests from IPSC flows.  Each call becomes an incoming message for the
standard ``RPCServer`` (``a.b.c`` -> namespace ``a.b``, method ``c``); the reply
goes back to the requesting process as a NOTIFY whose title is the request id.

Sender side: ``RPCClient`` on this transport addresses three topics, each a call of
:class:`~sbusr.transport.connection.BusConnection` (see ``_SENDERS``):

* ``ipsc``  -- ``call(ctxt, "start_flow", project=, flow=, params=[], unit=None,
  client=None, wait=False, ack_timeout=, result_timeout=)`` starts a flow on an IPSC
  (a random one unless unit/client say which) and answers ``{"unit", "client",
  "invoke_id", "ack", "message"}`` plus ``"result"`` when waiting;
  the answer carries ``ack_seconds`` when not waiting for the result (the IPSC's ack time);
* ``bus``   -- ``call(ctxt, "peers")`` / ``call(ctxt, "status")`` answer locally;
* anything else with ``server="unit:client"`` -- a JSON-RPC call to another
  sbusr-server over the bus (used by the HTTP API's /sys/reset).

URL: ``smartbus://[user:password@]host:port[,slave_host:slave_port]/?unit_id=N&client_id=N&client_type=N``
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import oslo_messaging
from oslo_config import cfg
from oslo_messaging._drivers import base

from sbusr import metrics, opts
from sbusr.jsonrpc.encoding import dumps, loads_or_text
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
    oslo_message,
    params_from_args,
    parse,
    reply_title,
    reply_title_for,
    result_response,
)
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, Packet
from sbusr.smartbus.interface import BusError, ClientConfig, FlowTimeout
from sbusr.transport.connection import BusConnection, ClientFactory, Exchange, ReplyTimeout
from sbusr.util.ratelog import RateLimitedLog

LOG = logging.getLogger(__name__)
#: requests answered by the driver itself (malformed, busy): one line per caller and code every 10 s
_OUTCOME_LOG = RateLimitedLog(LOG, logging.INFO, 10.0)

__all__ = ["RemoteError", "SmartBusDriver", "client_config_from_url"]


class RemoteError(BusError):
    """A JSON-RPC error object returned by another sbusr process."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}", code=code)
        self.rpc_message = message
        self.data = data


def _query_int(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def client_config_from_url(conf: cfg.ConfigOpts, url: oslo_messaging.TransportURL) -> ClientConfig:
    """Merge the transport URL over the ``[smartbus]`` defaults into a client identity."""
    try:
        return _client_config(conf, url)
    except ValueError as exc:
        raise oslo_messaging.InvalidTransportURL(str(url), f"smartbus URL: {exc}") from None


def _client_config(conf: cfg.ConfigOpts, url: oslo_messaging.TransportURL) -> ClientConfig:
    sb = conf.smartbus
    hosts = url.hosts or []
    master = hosts[0] if hosts else None
    slave = hosts[1] if len(hosts) > 1 else None
    if len(hosts) > 2:
        raise ValueError("it takes a master and at most one slave host")
    unknown = set(url.query) - {"unit_id", "client_id", "client_type"}
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}")
    config = ClientConfig(
        host=(master.hostname if master and master.hostname else sb.host),
        port=(master.port if master and master.port else sb.port),
        unit_id=_query_int(url.query, "unit_id", sb.unit_id),
        client_id=_query_int(url.query, "client_id", sb.client_id),
        client_type=_query_int(url.query, "client_type", sb.client_type),
        slave_host=slave.hostname if slave else None,
        slave_port=(slave.port or sb.port) if slave else None,
        user=(master.username or "") if master else "",
        password=(master.password or "") if master else "",
        add_info=sb.add_info,
        encoding=sb.encoding,
    )
    if not -128 <= config.client_type <= 127 or not 0 <= config.client_id <= 127:
        raise ValueError("client id (0..127) or client type (-128..127) out of range")
    if not 0 <= config.unit_id <= 47:
        raise ValueError(f"unit_id {config.unit_id} is not 0..47")
    return config


def parse_address(server: str | None) -> tuple[int, int]:
    """``"unit:client"`` -> (unit, client); the form used in ``Target.server``."""
    try:
        unit, client = (int(part) for part in str(server).split(":"))
    except ValueError:
        raise BusError(f"target server must be 'unit:client', got {server!r}") from None
    return unit, client


# ---------------------------------------------------------------------------- listener side


class _Responder:
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
        recorder = self._recorder
        if not self._batch:
            sent = self._send(response)
            if recorder is not None:
                self._record(recorder, method, sent)
            return
        with self._lock:
            self._slots[slot] = response
            self._methods[slot] = method
            self._missing -= 1
            done = self._missing == 0
        if done:
            answers = [r for r in self._slots if r is not None]
            if answers:
                sent = self._send(answers)
                if recorder is not None:
                    for name, answer in zip(self._methods, sent, strict=True):
                        self._record(recorder, name, answer)

    def _record(self, recorder: metrics.RequestMetrics, method: str, response: dict[str, Any]) -> None:
        error = response.get("error")
        if error is None:
            recorder.request_done(method, None, self._started)
        else:
            caller = f"{self._to.unit}:{self._to.client}"
            recorder.request_done(method, error.get("code"), self._started, caller, error.get("message"))

    def _send(self, response: Any) -> Any:
        """Send ``response`` (or, when too large, the error that replaces it); returns what was sent."""
        body = dumps(response, self._decimal_as)
        if len(body) > codec.MAX_NOTIFY_PARAM:
            LOG.warning("reply %r to %s is %d bytes; a NOTIFY carries at most %d: answering -32603",
                        self._title, self._to, len(body), codec.MAX_NOTIFY_PARAM)
            body = _too_large(response, len(body))
            too_large = error_response(None, INTERNAL_ERROR, "response too large")
            response = ([{**too_large, "id": r.get("id")} for r in response] if isinstance(response, list)
                        else {**too_large, "id": response.get("id")})  # what the metrics count
        try:
            self._exchange.send_reply(self._to, self._title, body)
        except (BusError, codec.CodecError) as exc:
            LOG.error("could not send reply %r to %s: %s", self._title, self._to, exc)
        return response


def _too_large(response: dict[str, Any] | list[dict[str, Any]], size: int) -> bytes:
    """The -32603 sent instead of a reply over the NOTIFY limit; always fits.

    A batch gets one error per call while that array fits, else a single error object (id = the
    first reply's, the id the flow waits on): a fallback that is itself too big would leave the
    flow waiting for nothing. Ids always fit: they were checked to be valid titles (<= 101 bytes).
    """
    message = f"response is {size} bytes; a SmartBus NOTIFY carries at most {codec.MAX_NOTIFY_PARAM}"
    if not isinstance(response, list):
        return dumps(error_response(response.get("id"), INTERNAL_ERROR, message))
    body = dumps([error_response(r.get("id"), INTERNAL_ERROR, message)
                          for r in response])
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


_message_ids = itertools.count(1)


class SmartBusIncomingMessage(base.RpcIncomingMessage):
    """One JSON-RPC call handed to the RPCServer; answered exactly once."""

    def __init__(self, ctxt: dict[str, Any], message: dict[str, Any], request_id: Any,
                 responder: _Responder | None, slot: int, exchange: Exchange, debug: bool = False) -> None:
        # a counter, not oslo's default uuid4: the id is only used in log lines
        super().__init__(ctxt, message, msg_id=str(next(_message_ids)))
        self.full_method = full_method(message.get("namespace"), message["method"])
        self.request_id = request_id
        self.exchange = exchange
        self._responder = responder
        self._slot = slot
        self._debug = debug
        self._unanswered = threading.Lock()  # held once answered: a one-shot token

    def reply(self, reply: Any = None, failure: Any = None) -> None:
        # RPCServer calls reply() once per message, notifications included
        if not self._answer(reply, None if failure is None else failure[1]):
            LOG.debug("late reply to %s dropped: already answered", self.full_method)

    def answer_early(self, error: BaseException) -> bool:
        """Answer now with ``error`` (from any thread); the method's own reply is dropped later."""
        return self._answer(None, error)

    def _answer(self, result: Any, error: BaseException | None) -> bool:
        if not self._unanswered.acquire(blocking=False):
            return False
        code, text = 0, ""
        if error is not None:
            code, text, data = error_from_exception(error, self._debug)
            if code == METHOD_NOT_FOUND:  # oslo only knows the last dotted part
                text = f"Method not found: {cut(self.full_method, MAX_QUOTED_NAME)}"
            if self._responder is not None:
                self._responder.fill(self._slot, error_response(self.request_id, code, text, data),
                                     self.full_method)
        elif self._responder is not None:  # None: a notification, run and answer nothing
            self._responder.fill(self._slot, result_response(self.request_id, result),
                                 self.full_method)
        self.exchange.call_done(self.full_method, code, text, replied=self._responder is not None)
        return True

    def acknowledge(self) -> None:
        """Nothing to acknowledge: a SmartBus request is answered by its reply alone."""

    def requeue(self) -> None:
        """Not supported (require_features refuses requeue)."""

    def heartbeat(self) -> None:
        """IPSC flows have no call-monitor protocol."""


class _Admission:
    """Bounds the request packets received but not yet fully answered.

    Beyond the limit a request is answered "server busy" at once: neither our queue
    nor the RPCServer executor's can grow without bound, and nothing is dropped.
    """

    __slots__ = ("_count", "_limit", "_lock")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._count = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self._count >= self._limit:
                return False
            self._count += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._count -= 1


class SmartBusListener(base.Listener):
    """Hands each request to the RPCServer as it arrives (push style: no polling thread).

    Parsing happens on the bus client's thread, then the RPCServer's own executor
    takes over; one thread hand-off per request instead of two.
    """

    def __init__(self, driver: SmartBusDriver) -> None:
        super().__init__(batch_size=1, batch_timeout=None)
        self._driver = driver
        self._conn = driver.open_connection(wait=False)  # registers in the background: never block a start
        execution = driver.conf.execution
        self._limit = execution.workers + execution.queue_size
        self._admission = _Admission(self._limit)

    def start(self, on_incoming_callback: Callable[[list[Any]], None]) -> None:
        super().start(on_incoming_callback)
        self._conn.set_request_sink(self._accept)

    def _accept(self, packet: Packet) -> None:
        """Runs on the bus client's thread."""
        deliver = self.on_incoming_callback
        if deliver is None:  # stopped: answer rather than drop
            self._driver.reject(packet, SERVER_BUSY, "server is shutting down")
            return
        exchange = self._conn.open_exchange(packet)
        if not self._admission.try_enter():
            _OUTCOME_LOG.log(("busy", packet.src), "request from %s refused with %d: %d requests already "
                             "waiting or running", packet.src, SERVER_BUSY, self._limit,
                             level=logging.WARNING)
            self._driver.reject(packet, SERVER_BUSY, "server busy, try again later", exchange)
            return
        exchange.on_close(self._admission.leave)
        for message in self._driver.incoming_from_packet(packet, exchange):
            try:
                deliver([message])
            except RuntimeError:  # the RPCServer's executor has shut down meanwhile
                message.reply(failure=(None, RpcError(SERVER_BUSY, "server is shutting down"),
                                       None))

    def cleanup(self) -> None:
        self._driver.phase = "stopping"  # from now on the connection's fallback answers
        self._conn.set_request_sink(None)


# ---------------------------------------------------------------------------- the driver


class SmartBusDriver(base.BaseDriver):
    """SmartBus transport: JSON-RPC from IPSC flows in, flow starts and sbusr calls out."""

    def __init__(self, conf: cfg.ConfigOpts, url: oslo_messaging.TransportURL,
                 default_exchange: str | None = None, allowed_remote_exmods: list[str] | None = None,
                 client_factory: ClientFactory | None = None) -> None:
        super().__init__(conf, url, default_exchange, allowed_remote_exmods)
        #: builds the connection's client instead of the configured backend (a worker's link)
        self._client_factory = client_factory
        opts.register_opts(conf)
        self._config = client_config_from_url(conf, url)
        # read per request: look them up once (oslo.config lookups are not free)
        self.debug = bool(getattr(conf, "debug", False) or conf.server.expose_tracebacks)
        self.decimal_as = conf.server.decimal_as
        self.max_request_size = conf.smartbus.max_request_size
        # ASCII text keeps its length in the wire encoding (GBK, UTF-8 ...): titles can be checked cheaply
        self._ascii_titles = "Az09-_".encode(self._config.encoding, errors="replace") == b"Az09-_"
        self._connection: BusConnection | None = None
        self._connection_lock = threading.Lock()
        #: after cleanup(): the connection it released (late replies try it; nothing reconnects)
        self._closed: BusConnection | None = None
        self._cleaned_up = False
        #: what request packets get while no listener takes them: "starting", later "stopping"
        self.phase = "starting"
        #: where answered calls are counted: this process's request metrics once it listens (or
        #: once a process-mode master answers for its workers)
        self.metrics: metrics.RequestMetrics | None = None

    @property
    def connection(self) -> BusConnection:
        """Connect lazily: creating a transport must not block on the bus."""
        return self.open_connection()

    def open_connection(self, connect: bool = True, wait: bool = True) -> BusConnection:
        """The connection, acquired with :meth:`answer_idle` as its fallback: from registration
        until the link closes, a request no listener takes is answered, never dropped."""
        with self._connection_lock:
            if self._connection is None:
                if self._cleaned_up:  # a stopping server never registers again
                    raise BusError("this SmartBus transport is closed", codec.ERR_NOT_CONNECTED)
                self._connection = BusConnection.acquire(self.conf, self._config, self.answer_idle,
                                                         connect=connect, wait=False,
                                                         client_factory=self._client_factory)
                first = connect and wait
            else:
                first = False
            conn = self._connection
        if first:  # the first user waits for the registration; the others meanwhile do not queue up
            conn.wait_registered()
        return conn

    def _reply_connection(self) -> BusConnection | None:
        """Where an answer goes: the open connection, after cleanup the one released (a late
        answer fails to send and is logged), and never a new one."""
        with self._connection_lock:
            if self._connection is not None or self._cleaned_up:
                return self._connection or self._closed
        return self.open_connection()

    def answer_idle(self, packet: Packet) -> None:
        """A request that arrived while nothing serves: -32002 "starting" or "shutting down"."""
        text = "server is starting" if self.phase == "starting" else "server is shutting down"
        self.reject(packet, SERVER_BUSY, text)

    def require_features(self, requeue: bool = False) -> None:
        if requeue:
            raise NotImplementedError("SmartBus cannot requeue messages")

    # ------------------------------------------------------------------ receiving

    def listen(self, target: oslo_messaging.Target, batch_size: int,
               batch_timeout: float | None) -> SmartBusListener:
        self.metrics = metrics.requests()
        return SmartBusListener(self)

    def listen_for_notifications(self, targets_and_priorities: Any, pool: Any, batch_size: int,
                                 batch_timeout: float | None) -> Any:
        raise NotImplementedError("the smartbus transport carries no oslo notifications")

    def _decode(self, packet: Packet) -> Parsed:
        if len(packet.body) > self.max_request_size:
            return Parsed(False, [error_response(
                None, INVALID_REQUEST,
                f"request is {len(packet.body)} bytes; the limit is {self.max_request_size}")])
        try:
            text = decode_payload(packet.body, self._config.encoding)
        except RpcError as exc:
            return Parsed(False, [error_response(None, exc.code, exc.message)])
        return parse(text)

    def incoming_from_packet(self, packet: Packet, exchange: Exchange | None = None
                             ) -> list[SmartBusIncomingMessage]:
        """Parse one request packet; invalid calls are answered here, valid ones returned.

        ``exchange`` (default: a plain one on this driver's connection) carries the reply and
        learns when every returned message has been answered.
        """
        if exchange is None:
            exchange = Exchange(self._reply_connection())
        parsed = self._decode(packet)
        if not parsed.items:
            exchange.expect(0)
            return []
        items = [self._titled(item) for item in parsed.items]
        answerable = [item for item in items
                      if not (isinstance(item, Call) and item.is_notification)]
        responder = None
        title = reply_title_for(items)  # after the title rule: a bad id is answered under "null"
        if title is not None:
            responder = _Responder(exchange, packet.src, title, parsed.is_batch, len(answerable),
                                   self.metrics, self.decimal_as)
        source = {"unit": packet.src.unit, "client": packet.src.client, "type": packet.src.type}
        incoming: list[SmartBusIncomingMessage] = []
        slot = 0
        for item in items:
            if not isinstance(item, Call):
                assert responder is not None
                error = item["error"]
                _OUTCOME_LOG.log((packet.src, error["code"]), "request from %s answered %d: %s", packet.src,
                                 error["code"], cut(error["message"], MAX_QUOTED_NAME))
                exchange.note("", error["code"], error["message"])
                responder.fill(slot, item)
                slot += 1
                continue
            message = oslo_message(item)
            ctxt = {"request_id": item.id, "source": source}
            if item.is_notification:
                incoming.append(SmartBusIncomingMessage(ctxt, message, None, None, 0, exchange, self.debug))
            else:
                incoming.append(SmartBusIncomingMessage(ctxt, message, item.id, responder, slot, exchange,
                                                        self.debug))
                slot += 1
        # after the invalid members' answers (a packet with no call closes here, reply included) and
        # before any call runs: the messages are only delivered once this returns
        exchange.expect(len(incoming))
        return incoming

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
            problem = codec.notify_title_problem(title, self._config.encoding)
            if problem is None:
                return item
            return error_response(
                None, INVALID_REQUEST,
                f"Invalid Request: id cannot be a SmartBus notify title ({problem}; "
                f"at most {codec.MAX_NOTIFY_TITLE} bytes in {self._config.encoding}, no NUL)")
        if item.get("id") is not None and codec.notify_title_problem(reply_title(item["id"]),
                                                                     self._config.encoding):
            return {**item, "id": None}
        return item

    def reject(self, packet: Packet, code: int, message: str, exchange: Exchange | None = None) -> None:
        """Answer every call in ``packet`` with one error (used while shutting down or when full)."""
        self.answer_for(packet, lambda _method: RpcError(code, message), exchange)

    def answer_for(self, packet: Packet, error_for: Callable[[str], BaseException],
                   exchange: Exchange | None = None) -> int:
        """Answer every call in ``packet`` with ``error_for(its full method name)``; the number of
        calls answered. The process-mode master uses it when a worker cannot answer."""
        incoming = self.incoming_from_packet(packet, exchange)
        for message in incoming:
            message.reply(failure=(None, error_for(message.full_method), None))
        return len(incoming)

    # ------------------------------------------------------------------ sending

    def send(self, target: oslo_messaging.Target, ctxt: dict[str, Any], message: dict[str, Any],
             wait_for_reply: bool | None = None, timeout: float | None = None,
             call_monitor_timeout: float | None = None, retry: int | None = None,
             transport_options: Any = None) -> Any:
        sender = self._SENDERS.get(target.topic, SmartBusDriver._call_sbusr)
        try:
            return sender(self, target, message, bool(wait_for_reply), timeout)
        except FlowTimeout as exc:
            raise oslo_messaging.MessagingTimeout(str(exc)) from None

    def send_notification(self, target: oslo_messaging.Target, ctxt: dict[str, Any],
                          message: dict[str, Any], version: str, retry: int | None = None) -> None:
        raise NotImplementedError("the smartbus transport carries no oslo notifications")

    def _bus_query(self, target: oslo_messaging.Target, message: dict[str, Any], wait: bool,
                   timeout: float | None) -> Any:
        method = message.get("method")
        if method == "peers":
            return [peer.as_dict() for peer in self.connection.peers()]
        if method == "status":
            return self.connection.status()
        raise BusError(f"unknown bus query {method!r}")

    def _start_flow(self, target: oslo_messaging.Target, message: dict[str, Any], wait: bool,
                    timeout: float | None) -> dict[str, Any]:
        args = message.get("args") or {}
        wait_result = bool(args.get("wait"))
        ack_timeout = float(args.get("ack_timeout") or timeout or 15.0)
        sent = time.monotonic()
        started = self.connection.start_flow(
            str(args["project"]), str(args["flow"]), list(args.get("params") or []), unit=args.get("unit"),
            client=args.get("client"), wait=wait_result, ack_timeout=ack_timeout,
            result_timeout=float(args.get("result_timeout") or ack_timeout))
        answer = dataclasses.asdict(started)
        if not wait_result:
            answer["ack_seconds"] = round(time.monotonic() - sent, 6)
        if not wait_result:
            del answer["result"]
        return answer

    def _call_sbusr(self, target: oslo_messaging.Target, message: dict[str, Any], wait: bool,
                    timeout: float | None) -> Any:
        unit, client = parse_address(target.server)
        name = full_method(target.namespace, message["method"])
        params = params_from_args(message.get("args") or {})
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": name, "params": params}
        if not wait:
            self.connection.send_request(unit, client, dumps(request))
            return None
        request["id"] = uuid.uuid4().hex
        try:
            raw = self.connection.call(unit, client, request["id"], dumps(request), timeout)
        except ReplyTimeout:
            raise oslo_messaging.MessagingTimeout(
                f"no reply from sbusr {unit}:{client} to {name} within {timeout} s") from None
        response = loads_or_text(raw)
        if isinstance(response, dict) and "error" in response:
            error = response["error"] or {}
            raise RemoteError(error.get("code", INTERNAL_ERROR), str(error.get("message", "")),
                              error.get("data"))
        if not isinstance(response, dict) or "result" not in response:
            raise RemoteError(INTERNAL_ERROR, f"malformed reply: {raw[:200]!r}")
        return response["result"]

    #: topic -> its sender; any other topic is a JSON-RPC call to the sbusr-server ``target.server``
    _SENDERS: ClassVar[dict[str | None, Callable[..., Any]]] = {"bus": _bus_query, "ipsc": _start_flow}

    def cleanup(self) -> None:
        """Release the connection (its link closes when nobody else holds it); for good."""
        with self._connection_lock:
            conn, self._connection = self._connection, None
            self._cleaned_up = True
            self._closed = conn or self._closed
        if conn is not None:  # not under the lock: the bus thread may be answering a late request
            conn.release()

