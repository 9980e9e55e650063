"""oslo.messaging transport driver for Hesong SmartBus (``smartbus://`` URLs).

Listener side: SmartBus data packets with cmdtype 211 carry JSON-RPC 2.0
requests from IPSC flows.  Each call becomes an incoming message for the
standard ``RPCServer`` (``a.b.c`` -> namespace ``a.b``, method ``c``); the reply
goes back to the requesting process as a NOTIFY whose title is the request id
(:mod:`sbusr.transport.replies`).

Sender side: ``RPCClient`` on this transport addresses three topics: ``ipsc`` (start a flow),
``bus`` (peers, status) and any other with ``server="unit:client"`` (a call to another
sbusr-server); :mod:`sbusr.transport.senders` says what each takes and answers.

URL: see :mod:`sbusr.transport.url`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_messaging._drivers import base

from sbusr import metrics, opts
from sbusr.jsonrpc.errors import SERVER_BUSY, RpcError
from sbusr.jsonrpc.protocol import oslo_message
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Packet
from sbusr.smartbus.interface import BusError, FlowTimeout
from sbusr.transport import senders
from sbusr.transport.connection import BusConnection, ClientFactory
from sbusr.transport.exchange import Exchange
from sbusr.transport.replies import OUTCOME_LOG, Answer, Phase, Replies
from sbusr.transport.url import client_config_from_url

LOG = logging.getLogger(__name__)

__all__ = ["SmartBusDriver"]

_message_ids = itertools.count(1)


class SmartBusIncomingMessage(base.RpcIncomingMessage):
    """One JSON-RPC call handed to the RPCServer; answered exactly once (see :class:`Answer`)."""

    def __init__(self, ctxt: dict[str, Any], message: dict[str, Any], answer: Answer) -> None:
        # a counter, not oslo's default uuid4: the id is only used in log lines
        super().__init__(ctxt, message, msg_id=str(next(_message_ids)))
        self.full_method = answer.full_method
        self.request_id = answer.request_id
        self.exchange = answer.exchange
        self._answer = answer

    def reply(self, reply: Any = None, failure: Any = None) -> None:
        # RPCServer calls reply() once per message, notifications included
        if not self._answer.give(reply, None if failure is None else failure[1]):
            LOG.debug("late reply to %s dropped: already answered", self.full_method)

    def answer_early(self, error: BaseException) -> bool:
        """Answer now with ``error`` (from any thread); the method's own reply is dropped later."""
        return self._answer.give(None, error)

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
        self._replies = driver.replies
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
            self._replies.reject(packet, SERVER_BUSY, "server is shutting down")
            return
        exchange = self._conn.open_exchange(packet)
        if not self._admission.try_enter():
            OUTCOME_LOG.log(("busy", packet.src), "request from %s refused with %d: %d requests already "
                            "waiting or running", packet.src, SERVER_BUSY, self._limit, level=logging.WARNING)
            self._replies.reject(packet, SERVER_BUSY, "server busy, try again later", exchange)
            return
        exchange.on_close(self._admission.leave)
        for message in self._driver.incoming_from_packet(packet, exchange):
            try:
                deliver([message])
            except RuntimeError:  # the RPCServer's executor has shut down meanwhile
                message.reply(failure=(None, RpcError(SERVER_BUSY, "server is shutting down"), None))

    def cleanup(self) -> None:
        self._replies.phase = Phase.STOPPING  # from now on the connection's fallback answers
        self._conn.set_request_sink(None)


class SmartBusDriver(base.BaseDriver):
    """SmartBus transport: JSON-RPC from IPSC flows in, flow starts and sbusr calls out."""

    def __init__(self, conf: cfg.ConfigOpts, url: oslo_messaging.TransportURL,
                 default_exchange: str | None = None, allowed_remote_exmods: list[str] | None = None,
                 client_factory: ClientFactory | None = None) -> None:
        #: builds the connection's client instead of the configured backend (a worker's link)
        self._client_factory = client_factory
        super().__init__(conf, url, default_exchange, allowed_remote_exmods)
        opts.register_opts(conf)
        self._config = client_config_from_url(conf, url)
        self._connection: BusConnection | None = None
        self._connection_lock = threading.Lock()
        #: after cleanup(): the connection it released (late replies try it; nothing reconnects)
        self._closed: BusConnection | None = None
        self._cleaned_up = False
        #: the replies to request packets; its metrics are this process's request metrics once it listens
        self.replies = Replies(conf, self._config.encoding, self._reply_connection)

    @property
    def connection(self) -> BusConnection:
        """Connect lazily: creating a transport must not block on the bus."""
        return self.open_connection()

    def open_connection(self, connect: bool = True, wait: bool = True) -> BusConnection:
        """The connection, acquired with :meth:`Replies.answer_idle` as its fallback: from
        registration until the link closes, a request no listener takes is answered, never dropped."""
        with self._connection_lock:
            if self._connection is None:
                if self._cleaned_up:  # a stopping server never registers again
                    raise BusError("this SmartBus transport is closed", codec.ERR_NOT_CONNECTED)
                self._connection = BusConnection.acquire(self.conf, self._config, self.replies.answer_idle,
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

    def require_features(self, requeue: bool = False) -> None:
        if requeue:
            raise NotImplementedError("SmartBus cannot requeue messages")

    # ------------------------------------------------------------------ receiving

    def listen(self, target: oslo_messaging.Target, batch_size: int,
               batch_timeout: float | None) -> SmartBusListener:
        self.replies.metrics = metrics.requests()
        return SmartBusListener(self)

    def listen_for_notifications(self, targets_and_priorities: Any, pool: Any, batch_size: int,
                                 batch_timeout: float | None) -> Any:
        raise NotImplementedError("the smartbus transport carries no oslo notifications")

    def incoming_from_packet(self, packet: Packet, exchange: Exchange | None = None
                             ) -> list[SmartBusIncomingMessage]:
        """Parse one request packet; invalid calls are answered here, valid ones returned.

        ``exchange`` (default: a plain one on this driver's connection) carries the reply and
        learns when every returned message has been answered.
        """
        calls = self.replies.open(packet, exchange)
        if not calls:
            return []
        source = {"unit": packet.src.unit, "client": packet.src.client, "type": packet.src.type}
        return [SmartBusIncomingMessage({"request_id": call.id, "source": source}, oslo_message(call), answer)
                for call, answer in calls]

    # ------------------------------------------------------------------ sending

    def send(self, target: oslo_messaging.Target, ctxt: dict[str, Any], message: dict[str, Any],
             wait_for_reply: bool | None = None, timeout: float | None = None,
             call_monitor_timeout: float | None = None, retry: int | None = None,
             transport_options: Any = None) -> Any:
        sender = senders.sender_for(target.topic)
        try:
            return sender(self.open_connection, target, message, bool(wait_for_reply), timeout)
        except FlowTimeout as exc:
            raise oslo_messaging.MessagingTimeout(str(exc)) from None

    def send_notification(self, target: oslo_messaging.Target, ctxt: dict[str, Any],
                          message: dict[str, Any], version: str, retry: int | None = None) -> None:
        raise NotImplementedError("the smartbus transport carries no oslo notifications")

    def cleanup(self) -> None:
        """Release the connection (its link closes when nobody else holds it); for good."""
        with self._connection_lock:
            conn, self._connection = self._connection, None
            self._cleaned_up = True
            self._closed = conn or self._closed
        if conn is not None:  # not under the lock: the bus thread may be answering a late request
            conn.release()
