"""oslo.messaging transport driver for Hesong SmartBus (``smartbus://`` URLs).

Listener side: SmartBus data packets with cmdtype 211 carry JSON-RPC 2.0
requests from IPSC flows.  Each call becomes an incoming message for the
standard ``RPCServer`` (``a.b.c`` -> namespace ``a.b``, method ``c``); the reply
goes back to the requesting process as a NOTIFY whose title is the request id.

Sender side: ``RPCClient`` on this transport addresses three topics:

* ``ipsc``  -- ``call(ctxt, "start_flow", project=, flow=, params=[], server=None,
  process=None, wait=False, ack_timeout=, result_timeout=)`` starts an IPSC flow (the answer
  carries ``ack_seconds``, the time the IPSC took to acknowledge);
* ``bus``   -- ``call(ctxt, "peers")`` / ``call(ctxt, "status")`` answer locally;
* anything else with ``server="unit:client"`` -- a JSON-RPC call to another
  sbusr-server over the bus (used by the HTTP API's /sys/reset).

URL: ``smartbus://[user:password@]host:port[,slave_host:slave_port]/?unit_id=N&client_id=N&client_type=N``
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_messaging._drivers import base

from sbusr import jsonrpc, metrics, opts
from sbusr.connection import BusConnection, IpscUnavailable
from sbusr.dispatch import POSITIONAL_KEY, oslo_message
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, Packet
from sbusr.smartbus.interface import BusError, ClientConfig, FlowTimeout

LOG = logging.getLogger(__name__)

__all__ = ["FlowRejected", "IpscUnavailable", "RemoteError", "SmartBusDriver", "client_config_from_url"]


class FlowRejected(BusError):
    """The IPSC answered a flow start with an error ack."""

    def __init__(self, ack: int, message: str, source: Address | None) -> None:
        super().__init__(f"IPSC {source} refused the flow: ack {ack} {message}".strip(), code=ack)
        self.ack = ack
        self.ack_message = message
        self.source = source


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

    __slots__ = ("_batch", "_conn", "_debug", "_lock", "_methods", "_missing", "_recorder", "_slots",
                 "_started", "_title", "_to")

    def __init__(self, conn: BusConnection, to: Address, title: str, batch: bool, size: int,
                 debug: bool, recorder: metrics.RequestMetrics | None = None) -> None:
        self._conn = conn
        self._to = to
        self._title = title
        self._batch = batch
        self._slots: list[dict[str, Any] | None] = [None] * size
        self._methods = [metrics.UNKNOWN_METHOD] * size if batch else []  # per slot, for the metrics
        self._missing = size
        self._lock = threading.Lock()
        self._debug = debug
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

    def fill_failure(self, slot: int, request_id: Any, exc: BaseException, method: str) -> None:
        code, message, data = jsonrpc.error_from_exception(exc, self._debug)
        if code == jsonrpc.METHOD_NOT_FOUND:  # oslo only knows the last dotted part
            message = f"Method not found: {method}"
        self.fill(slot, jsonrpc.error_response(request_id, code, message, data), method)

    def _record(self, recorder: metrics.RequestMetrics, method: str, response: dict[str, Any]) -> None:
        error = response.get("error")
        if error is None:
            recorder.request_done(method, None, self._started)
        else:
            caller = f"{self._to.unit}:{self._to.client}"
            recorder.request_done(method, error.get("code"), self._started, caller, error.get("message"))

    def _send(self, response: Any) -> Any:
        """Send ``response`` (or, when too large, the error that replaces it); returns what was sent."""
        body = jsonrpc.dumps(response)
        if len(body) > codec.MAX_NOTIFY_PARAM:
            LOG.error("reply %r to %s is %d bytes; a NOTIFY carries at most %d", self._title, self._to,
                      len(body), codec.MAX_NOTIFY_PARAM)
            response = _too_large(response, len(body))
            body = jsonrpc.dumps(response)
        try:
            self._conn.send_reply(self._to, self._title, body)
        except (BusError, codec.CodecError) as exc:
            LOG.error("could not send reply %r to %s: %s", self._title, self._to, exc)
        return response


def _too_large(response: dict[str, Any] | list[dict[str, Any]], size: int) -> Any:
    message = f"response is {size} bytes; a SmartBus NOTIFY carries at most {codec.MAX_NOTIFY_PARAM}"
    if isinstance(response, list):
        return [jsonrpc.error_response(r.get("id"), jsonrpc.INTERNAL_ERROR, message) for r in response]
    return jsonrpc.error_response(response.get("id"), jsonrpc.INTERNAL_ERROR, message)


_serving = threading.local()
_message_ids = itertools.count(1)


def current_message() -> SmartBusIncomingMessage | None:
    """The message the calling RPCServer executor thread is dispatching, if any.

    The execution layer uses it to answer a call that overruns its time limit
    without moving the call to another thread (see :meth:`answer_early`).
    """
    return getattr(_serving, "message", None)


class SmartBusIncomingMessage(base.RpcIncomingMessage):
    """One JSON-RPC call handed to the RPCServer; answered exactly once."""

    def __init__(self, ctxt: dict[str, Any], message: dict[str, Any], request_id: Any,
                 responder: _Responder | None, slot: int) -> None:
        # a counter, not oslo's default uuid4: the id is only used in log lines
        super().__init__(ctxt, message, msg_id=str(next(_message_ids)))
        self.full_method = (f"{message['namespace']}.{message['method']}" if message.get("namespace")
                            else message["method"])
        self._request_id = request_id
        self._responder = responder
        self._slot = slot
        self._unanswered = threading.Lock()  # held once answered: a one-shot token
        self.on_done: Callable[[], None] | None = None

    def reply(self, reply: Any = None, failure: Any = None) -> None:
        # RPCServer calls reply() once per message, notifications included
        if getattr(_serving, "message", None) is self:
            _serving.message = None
        if not self._answer(reply, None if failure is None else failure[1]):
            LOG.debug("late reply to %s dropped: already answered", self.full_method)

    def answer_early(self, error: BaseException) -> bool:
        """Answer now with ``error`` (from any thread); the method's own reply is dropped later."""
        return self._answer(None, error)

    def _answer(self, result: Any, error: BaseException | None) -> bool:
        if not self._unanswered.acquire(blocking=False):
            return False
        if self.on_done is not None:
            self.on_done()
            self.on_done = None
        if self._responder is None:  # a notification: run, answer nothing
            return True
        if error is not None:
            self._responder.fill_failure(self._slot, self._request_id, error, self.full_method)
        else:
            self._responder.fill(self._slot, jsonrpc.result_response(self._request_id, result),
                                 self.full_method)
        return True

    def acknowledge(self) -> None:
        """RPCServer acknowledges in the thread that then dispatches: remember the message there."""
        _serving.message = self

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

    def ticket(self, messages: int) -> Callable[[], None]:
        """A callback to call once per message; the packet leaves after the last one."""
        remaining = [messages]
        lock = threading.Lock()

        def done() -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                self.leave()

        return done


class SmartBusListener(base.Listener):
    """Hands each request to the RPCServer as it arrives (push style: no polling thread).

    Parsing happens on the bus client's thread, then the RPCServer's own executor
    takes over; one thread hand-off per request instead of two.
    """

    def __init__(self, driver: SmartBusDriver) -> None:
        super().__init__(batch_size=1, batch_timeout=None)
        self._driver = driver
        self._conn = driver.connection
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
            self._driver.reject(packet, jsonrpc.SERVER_BUSY, "server is shutting down")
            return
        if not self._admission.try_enter():
            LOG.warning("request from %s refused: %d requests already waiting or running", packet.src,
                        self._limit)
            self._driver.reject(packet, jsonrpc.SERVER_BUSY, "server busy, try again later")
            return
        for message in self._admit(self._driver.incoming_from_packet(packet)):
            try:
                deliver([message])
            except RuntimeError:  # the RPCServer's executor has shut down meanwhile
                message.reply(failure=(None, jsonrpc.RpcError(jsonrpc.SERVER_BUSY, "server is shutting down"),
                                       None))

    def _admit(self, messages: list[SmartBusIncomingMessage]) -> list[SmartBusIncomingMessage]:
        if not messages:
            self._admission.leave()
            return messages
        if len(messages) == 1:  # the common case: no shared countdown needed
            messages[0].on_done = self._admission.leave
            return messages
        done = self._admission.ticket(len(messages))
        for message in messages:
            message.on_done = done
        return messages

    def cleanup(self) -> None:
        self._conn.set_request_sink(None)


# ---------------------------------------------------------------------------- the driver


class SmartBusDriver(base.BaseDriver):
    """SmartBus transport: JSON-RPC from IPSC flows in, flow starts and sbusr calls out."""

    def __init__(self, conf: cfg.ConfigOpts, url: oslo_messaging.TransportURL,
                 default_exchange: str | None = None, allowed_remote_exmods: list[str] | None = None) -> None:
        super().__init__(conf, url, default_exchange, allowed_remote_exmods)
        opts.register_opts(conf)
        self._config = client_config_from_url(conf, url)
        # read per request: look them up once (oslo.config lookups are not free)
        self.debug = bool(getattr(conf, "debug", False) or conf.server.expose_tracebacks)
        self.max_request_size = conf.smartbus.max_request_size
        self._connection: BusConnection | None = None
        self._connection_lock = threading.Lock()
        #: where answered calls are counted: this process's request metrics once it listens
        self.metrics: metrics.RequestMetrics | None = None

    @property
    def connection(self) -> BusConnection:
        """Connect lazily: creating a transport must not block on the bus."""
        with self._connection_lock:
            if self._connection is None:
                self._connection = BusConnection.acquire(self.conf, self._config)
            return self._connection

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

    def _decode(self, packet: Packet) -> jsonrpc.Parsed:
        if len(packet.body) > self.max_request_size:
            return jsonrpc.Parsed(False, [jsonrpc.error_response(
                None, jsonrpc.INVALID_REQUEST,
                f"request is {len(packet.body)} bytes; the limit is {self.max_request_size}")])
        try:
            text = jsonrpc.decode_payload(packet.body, self._config.encoding)
        except jsonrpc.RpcError as exc:
            return jsonrpc.Parsed(False, [jsonrpc.error_response(None, exc.code, exc.message)])
        return jsonrpc.parse(text)

    def incoming_from_packet(self, packet: Packet) -> list[SmartBusIncomingMessage]:
        """Parse one request packet; invalid calls are answered here, valid ones returned."""
        parsed = self._decode(packet)
        if not parsed.items:
            return []
        answerable = [item for item in parsed.items
                      if not (isinstance(item, jsonrpc.Call) and item.is_notification)]
        responder = None
        if answerable:
            first = answerable[0]
            title = _title(first.id if isinstance(first, jsonrpc.Call) else first.get("id"))
            responder = _Responder(self.connection, packet.src, title, parsed.is_batch, len(answerable),
                                   self.debug, self.metrics)
        source = {"unit": packet.src.unit, "client": packet.src.client, "type": packet.src.type}
        incoming: list[SmartBusIncomingMessage] = []
        slot = 0
        for item in parsed.items:
            if not isinstance(item, jsonrpc.Call):
                assert responder is not None
                responder.fill(slot, item)
                slot += 1
                continue
            message = oslo_message(item)
            ctxt = {"request_id": item.id, "source": source}
            if item.is_notification:
                incoming.append(SmartBusIncomingMessage(ctxt, message, None, None, 0))
            else:
                incoming.append(SmartBusIncomingMessage(ctxt, message, item.id, responder, slot))
                slot += 1
        return incoming

    def reject(self, packet: Packet, code: int, message: str) -> None:
        """Answer every call in ``packet`` with one error (used while shutting down or when full)."""
        for incoming in self.incoming_from_packet(packet):
            incoming.reply(failure=(None, jsonrpc.RpcError(code, message), None))

    # ------------------------------------------------------------------ sending

    def send(self, target: oslo_messaging.Target, ctxt: dict[str, Any], message: dict[str, Any],
             wait_for_reply: bool | None = None, timeout: float | None = None,
             call_monitor_timeout: float | None = None, retry: int | None = None,
             transport_options: Any = None) -> Any:
        topic = target.topic
        if topic == "bus":
            return self._local_query(message)
        if topic == "ipsc":
            return self._start_flow(message.get("args", {}), timeout)
        return self._call_sbusr(target, message, bool(wait_for_reply), timeout)

    def send_notification(self, target: oslo_messaging.Target, ctxt: dict[str, Any],
                          message: dict[str, Any], version: str, retry: int | None = None) -> None:
        raise NotImplementedError("the smartbus transport carries no oslo notifications")

    def _local_query(self, message: dict[str, Any]) -> Any:
        conn = self.connection
        method = message.get("method")
        if method == "peers":
            return [peer.as_dict() for peer in conn.peers()]
        if method == "status":
            return {"connected": conn.connected, "access_point": conn.client.access_point,
                    "address": {"unit": self._config.unit_id, "client": self._config.client_id,
                                "type": self._config.client_type},
                    "ipsc": sum(1 for p in conn.peers() if p.is_ipsc)}
        raise BusError(f"unknown bus query {method!r}")

    def _start_flow(self, args: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        conn = self.connection
        peer = conn.choose_ipsc(args.get("server"), args.get("process"))
        params = jsonrpc.dumps(list(args.get("params") or []))
        wait = bool(args.get("wait"))
        ack_timeout = float(args.get("ack_timeout") or timeout or 15.0)
        result_timeout = float(args.get("result_timeout") or ack_timeout)
        sent = time.monotonic()
        invocation = conn.client.invoke_flow(peer.unit, peer.client, str(args["project"]), str(args["flow"]),
                                             params, want_result=wait, ack_timeout=ack_timeout,
                                             result_timeout=result_timeout if wait else None)
        try:
            ack = invocation.ack.result(timeout=ack_timeout + 1.0)
        except (FlowTimeout, concurrent.futures.TimeoutError):
            if invocation.result is not None:
                invocation.result.cancel()
            raise oslo_messaging.MessagingTimeout(f"IPSC {peer.unit}/{peer.client} did not acknowledge "
                                                  f"the flow within {ack_timeout:g} s") from None
        answer: dict[str, Any] = {"server": peer.unit, "process": peer.client,
                                  "invoke_id": invocation.invoke_id, "ack": ack.ack, "message": ack.message,
                                  "ack_seconds": round(time.monotonic() - sent, 6)}
        if ack.ack != codec.FLOW_ACK_OK:
            raise FlowRejected(ack.ack, ack.message, ack.source)
        if wait and invocation.result is not None:
            try:
                raw = invocation.result.result(timeout=result_timeout + 1.0)
            except (FlowTimeout, concurrent.futures.TimeoutError):
                raise oslo_messaging.MessagingTimeout(
                    f"flow {args['project']}/{args['flow']} returned no result within {result_timeout:g} s"
                ) from None
            answer["result"] = _loads(raw)
        return answer

    def _call_sbusr(self, target: oslo_messaging.Target, message: dict[str, Any], wait: bool,
                    timeout: float | None) -> Any:
        conn = self.connection
        unit, client = parse_address(target.server)
        name = message["method"] if not target.namespace else f"{target.namespace}.{message['method']}"
        args = message.get("args") or {}
        params: Any = args[POSITIONAL_KEY] if POSITIONAL_KEY in args else args
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": name, "params": params}
        if wait:
            request["id"] = uuid.uuid4().hex
            reply = conn.expect_reply(request["id"])
        try:
            conn.client.send_data(Address(unit, client, -1), 1, codec.CMDTYPE_RPC, jsonrpc.dumps(request))
            if not wait:
                return None
            try:
                raw = reply.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                raise oslo_messaging.MessagingTimeout(
                    f"no reply from sbusr {unit}:{client} to {name} within {timeout} s") from None
        finally:
            if wait:
                conn.forget_reply(request["id"])
        response = _loads(raw)
        if isinstance(response, dict) and "error" in response:
            error = response["error"] or {}
            raise RemoteError(error.get("code", jsonrpc.INTERNAL_ERROR), str(error.get("message", "")),
                              error.get("data"))
        if not isinstance(response, dict) or "result" not in response:
            raise RemoteError(jsonrpc.INTERNAL_ERROR, f"malformed reply: {raw[:200]!r}")
        return response["result"]

    def cleanup(self) -> None:
        with self._connection_lock:
            if self._connection is not None:
                self._connection.release()
                self._connection = None


def _loads(raw: bytes | str) -> Any:
    """Parse a JSON payload from the bus, falling back to its text when it is not JSON."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw  # flow results are str
    try:
        return json.loads(text)
    except ValueError:
        return text


def _title(request_id: Any) -> str:
    """The NOTIFY title a flow waits on: the request id as text, "null" when there is none.

    Never empty: the vendor library refuses a NOTIFY with an empty title (so an id of "" is
    answered under "null" too).
    """
    if request_id is None or request_id == "":
        return "null"
    if isinstance(request_id, bool):
        return "true" if request_id else "false"
    return str(request_id)
