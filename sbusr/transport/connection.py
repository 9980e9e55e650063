"""One SmartBus connection per process identity, shared by the RPC listener and the sender.

The oslo.messaging driver is thin glue; this module owns the link: which backend to use, sharing
one registration between everything in the process that talks to the bus, routing incoming packets
(JSON-RPC requests to the listener, NOTIFY replies to waiting callers) and sending: replies, flow
starts on an IPSC (:meth:`BusConnection.start_flow`) and requests to another sbusr-server
(:meth:`BusConnection.call`). Its parts live beside it: :mod:`~sbusr.transport.peers`,
:mod:`~sbusr.transport.flows`, :mod:`~sbusr.transport.standby`, :mod:`~sbusr.transport.embedded`.

Vocabulary: every bus peer, an IPSC process included, is addressed by its
``unit`` and ``client`` id; "server" only ever means an sbusr-server.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from sbusr import metrics, opts
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, GlobalConnect, Packet
from sbusr.smartbus.interface import BusClient, BusError, ClientConfig, ClientHandlers, resolve
from sbusr.transport import flows
from sbusr.transport.embedded import ensure_embedded_bus
from sbusr.transport.exchange import Exchange
from sbusr.transport.flows import FlowStarted
from sbusr.transport.peers import Peer, PeerTable
from sbusr.transport.standby import STANDBY_RETRY, Standby
from sbusr.util import ready
from sbusr.util.ratelog import RateLimitedLog

LOG = logging.getLogger(__name__)
#: malformed packets from a peer: one WARNING per sender and kind every 10 s, with a count of the rest
BAD_PACKET_LOG = RateLimitedLog(LOG, logging.WARNING, 10.0)

RequestSink = Callable[[Packet], None]
#: builds a connection's client instead of the configured backend (a process-mode worker's link)
ClientFactory = Callable[[ClientConfig, ClientHandlers], BusClient]


class ReplyTimeout(BusError):
    """No reply NOTIFY arrived in time."""


def make_client(conf: cfg.ConfigOpts, config: ClientConfig, handlers: ClientHandlers) -> BusClient:
    """The configured backend: the native client or the vendor library."""
    if conf.smartbus.backend == "vendor":
        from sbusr.smartbus.vendor.client import VendorClient

        library_path = opts.config_relative(conf, conf.smartbus.library_path, "library_path", "smartbus")
        return VendorClient(config, handlers, library_path=library_path or None)
    from sbusr.smartbus.native.threaded import ThreadedClient

    return ThreadedClient(config, handlers, duplicate_retry=STANDBY_RETRY)


class BusConnection:
    """A started SmartBus client plus the bookkeeping both RPC directions need."""

    _instances: dict[tuple[object, ...], BusConnection] = {}
    _instances_lock = threading.Lock()

    def __init__(self, conf: cfg.ConfigOpts, config: ClientConfig,
                 client_factory: ClientFactory | None = None) -> None:
        self.conf = conf
        self.config = config
        self._notify_ttl = conf.smartbus.notify_ttl  # read once: oslo.config look-ups cost µs per reply
        conf.register_mutate_hook(self._on_config_mutated)  # ...and again when a reload changes it
        self.encoding = config.encoding
        self._refs = 0
        self._peers = PeerTable()
        self._replies: dict[str, concurrent.futures.Future[bytes]] = {}
        self._replies_lock = threading.Lock()
        self._request_sink: RequestSink | None = None
        self._fallback_sink: RequestSink | None = None
        self._standby = Standby(f"{config.host}:{config.port}", config.address)
        self._released = False  # for good: a released connection never registers again
        self._metrics = metrics.bus()
        make = client_factory or (lambda config_, handlers: make_client(conf, config_, handlers))
        self.client = make(config, ClientHandlers(
            on_connect=self._on_connect,
            on_connect_failed=self._on_connect_failed,
            on_disconnect=self._on_disconnect,
            on_packet=self._on_packet,
            on_global_connect=self._on_global_connect,
        ))

    def _on_config_mutated(self, conf: cfg.ConfigOpts, fresh: dict) -> None:
        """oslo.config mutate hook (SIGHUP / sys.reload): pick up a new [smartbus] notify_ttl."""
        self._notify_ttl = conf.smartbus.notify_ttl

    # ------------------------------------------------------------------ sharing

    @classmethod
    def acquire(cls, conf: cfg.ConfigOpts, config: ClientConfig, fallback_sink: RequestSink | None = None,
                connect: bool = True, wait: bool = True,
                client_factory: ClientFactory | None = None) -> BusConnection:
        """The process-wide connection for this identity, started on first use.

        ``fallback_sink`` gets the request packets that arrive while no listener is installed (a
        server answers them "starting" or "shutting down" instead of dropping them); it is set
        before the client registers. With ``connect=False`` the caller starts the client itself
        (:meth:`connect`) once it is ready to serve; with ``wait=False`` it does not wait for the
        first registration. ``client_factory`` builds the client of a new connection instead of the
        configured backend.
        """
        key = (config.host, config.port, config.unit_id, config.client_id, config.client_type,
               conf.smartbus.backend)
        with cls._instances_lock:
            conn = cls._instances.get(key)
            if conn is None:
                conn = cls(conf, config, client_factory)
                conn._fallback_sink = fallback_sink
                cls._instances[key] = conn
                if connect:
                    conn.connect(wait=wait)
            elif fallback_sink is not None and conn._fallback_sink is None:
                conn._fallback_sink = fallback_sink
            conn._refs += 1
            return conn

    def connect(self, wait: bool = False) -> None:
        """Start the client (registering, then reconnecting forever); idempotent; nothing once
        released (a stopping server must not register again)."""
        if self._released:
            LOG.debug("SmartBus connection %s already released; not connecting", self.config.address)
            return
        if self.conf.smartbus.embedded_bus:
            ensure_embedded_bus(self.config.host, self.config.port, self.config.encoding)
        self.client.start()
        if wait:
            self.wait_registered()

    def wait_registered(self) -> bool:
        """Wait up to ``[smartbus] connect_timeout`` for the registration (a WARNING if it is late)."""
        if self.client.wait_connected(self.conf.smartbus.connect_timeout):
            return True
        LOG.warning("not registered on SmartBus %s:%s yet; retrying in the background",
                    self.config.host, self.config.port)
        return False

    @property
    def loop(self) -> object | None:
        """The event loop the client dispatches packets on, when the backend has one (native)."""
        return getattr(self.client, "loop", None)

    def release(self) -> None:
        with self._instances_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            for key, conn in list(self._instances.items()):
                if conn is self:
                    del self._instances[key]
            self._released = True
        self.client.stop()
        self._metrics.bus_connected(False)
        with self._replies_lock:
            pending, self._replies = self._replies, {}
        for fut in pending.values():
            fut.cancel()

    # ------------------------------------------------------------------ events (backend thread)

    def _on_connect(self, access_point: int) -> None:
        self._standby.registered()
        LOG.info("registered on SmartBus %s:%s as %s, access point unit %s", self.config.host,
                 self.config.port, self.config.address, access_point)
        self._metrics.bus_connected(True)
        ready.mark("registered")

    def _on_connect_failed(self, code: int) -> None:
        if code == codec.ERR_CONNECTED:  # retried every STANDBY_RETRY s: said once, then once a minute
            self._standby.refused()
            return
        LOG.warning("SmartBus registration at %s:%s failed with code %s", self.config.host,
                    self.config.port, code)

    def _on_disconnect(self) -> None:
        LOG.warning("SmartBus link to %s:%s lost; reconnecting", self.config.host, self.config.port)
        self._peers.clear()
        self._metrics.bus_connected(False)
        self._metrics.set_ipsc_peers(0)

    def _on_global_connect(self, event: GlobalConnect) -> None:
        ipsc = self._peers.update(event)
        self._metrics.set_ipsc_peers(ipsc)
        LOG.info("peer %s/%s type %s %s (%s)", event.unit, event.client, event.type,
                 {0: "left", 1: "joined", 2: "present"}.get(event.status, event.status), event.add_info)

    def _on_packet(self, packet: Packet) -> None:
        header = packet.header
        if header.cmdtype == codec.CMDTYPE_RPC:
            sink = self._request_sink or self._fallback_sink
            if sink is None:
                LOG.warning("JSON-RPC request from %s but this process serves no methods; dropped",
                            header.src)
                return
            sink(packet)
        elif header.cmdtype == codec.CMDTYPE_SYSTEM and header.cmd == codec.CMD_NOTIFY:
            self._on_notify(packet)
        else:
            LOG.debug("ignoring packet cmd %s/%s from %s", header.cmd, header.cmdtype, header.src)

    def _on_notify(self, packet: Packet) -> None:
        try:
            notify = codec.decode_notify(packet.body, self.encoding)
        except codec.CodecError as exc:
            BAD_PACKET_LOG.log((packet.src, "notify"), "bad NOTIFY from %s: %s", packet.src, exc)
            return
        if not self._deliver_reply(notify.title, notify.param):
            LOG.debug("NOTIFY %r from %s matches no pending call", notify.title, packet.src)

    def _deliver_reply(self, title: str, body: bytes) -> bool:
        with self._replies_lock:
            fut = self._replies.pop(title, None)
        if fut is None:
            return False
        resolve(fut, body)
        return True

    # ------------------------------------------------------------------ listener side

    def set_request_sink(self, sink: RequestSink | None) -> None:
        """Route incoming JSON-RPC request packets (cmdtype 211) to ``sink``; None stops routing."""
        if sink is not None and self._request_sink is not None:
            raise BusError("this SmartBus connection already has an RPC listener")
        self._request_sink = sink

    def open_exchange(self, packet: Packet) -> Exchange:
        """The :class:`Exchange` that answers ``packet`` (the client's own kind, if it has one)."""
        opener = getattr(self.client, "open_exchange", None)
        return opener(packet) if opener is not None else Exchange(self)

    def forward(self, raw: bytes) -> None:
        """Send a complete, already encoded packet (a worker's NOTIFY reply) to the bus unchanged.

        A backend that cannot send raw bytes (the vendor library) gets the NOTIFY decoded and
        sent through its own send_notify.
        """
        header = codec.decode_header(raw)
        dst = header.dst
        if dst.unit == self.config.unit_id and dst.client == self.config.client_id:
            # a reply to this process's own request (request_self): a bus does not echo it back
            notify = codec.decode_notify(raw[codec.HEADER_SIZE:codec.HEADER_SIZE + header.datalen],
                                         self.encoding)
            self._deliver_reply(notify.title, notify.param)
            return
        send_raw = getattr(self.client, "send_raw", None)
        if send_raw is not None:
            send_raw(raw)
            return
        if header.cmdtype != codec.CMDTYPE_SYSTEM or header.cmd != codec.CMD_NOTIFY:
            raise BusError(f"cannot forward cmd {header.cmd}/{header.cmdtype} through this backend")
        notify = codec.decode_notify(raw[codec.HEADER_SIZE:codec.HEADER_SIZE + header.datalen], self.encoding)
        self.client.send_notify(dst.unit, dst.client, notify.project, notify.title, notify.param,
                                expires_ms=notify.expires, mode=notify.mode, client_type=dst.type)

    @property
    def notify_ttl(self) -> int:
        return self._notify_ttl

    def send_reply(self, to: Address, title: str, body: bytes) -> None:
        """A JSON-RPC response as the NOTIFY an IPSC flow waits for (title = request id).

        A reply to this process's own address (a :meth:`request_self` call) is delivered here:
        a bus does not echo a client's packets back to it.
        """
        if to.unit == self.config.unit_id and to.client == self.config.client_id:
            self._deliver_reply(title, body)
            return
        self.client.send_notify(to.unit, to.client, "", title, body,
                                expires_ms=self._notify_ttl, client_type=to.type)

    # ------------------------------------------------------------------ sender side

    def start_flow(self, project: str, flow: str, params: list[Any], *, unit: int | None = None,
                   client: int | None = None, wait: bool = False, ack_timeout: float,
                   result_timeout: float) -> FlowStarted:
        """Start ``project``/``flow`` on an IPSC (a random one unless ``unit``/``client`` say which).

        Returns once the IPSC acknowledged the flow or, with ``wait``, once the flow returned its
        result. Raises IpscUnavailable, FlowRejected (error ack), FlowTimeout, BusError
        (:func:`sbusr.transport.flows.start_flow`).
        """
        return flows.start_flow(self.client, self.choose_ipsc(unit, client), project, flow, params, wait=wait,
                                ack_timeout=ack_timeout, result_timeout=result_timeout)

    def send_request(self, unit: int, client: int, body: bytes) -> None:
        """Send a JSON-RPC request packet (cmdtype 211) to the sbusr-server at ``unit``/``client``."""
        self.client.send_data(Address(unit, client, -1), 1, codec.CMDTYPE_RPC, body)

    def call(self, unit: int, client: int, request_id: str, body: bytes, timeout: float | None) -> bytes:
        """Send a JSON-RPC request and return the reply NOTIFY's body (titled ``request_id``)."""
        reply = self.expect_reply(request_id)
        try:
            self.send_request(unit, client, body)
            try:
                return reply.result(timeout=timeout)
            except concurrent.futures.TimeoutError:
                raise ReplyTimeout(f"no reply from {unit}:{client} to {request_id!r} within {timeout} s",
                                   codec.ERR_TIMEOUT) from None
        finally:
            self.forget_reply(request_id)

    def status(self) -> dict[str, Any]:
        """The link, this process's bus identity and how many IPSCs are on the bus (JSON-friendly)."""
        config = self.config
        return {"connected": self.connected, "access_point": self.client.access_point,
                "address": {"unit": config.unit_id, "client": config.client_id, "type": config.client_type},
                "ipsc": sum(1 for p in self.peers() if p.is_ipsc)}

    def expect_reply(self, title: str) -> concurrent.futures.Future[bytes]:
        fut: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        with self._replies_lock:
            if title in self._replies:
                raise BusError(f"a call with id {title!r} is already waiting")
            self._replies[title] = fut
        return fut

    def request_self(self, body: bytes, title: str, timeout: float | None) -> bytes:
        """Send a JSON-RPC request to this process's own address and return the reply's body.

        The request packet enters exactly where packets from the bus enter (so it is admitted,
        dispatched and answered like any caller's), but never crosses the wire: a bus does not
        route a client's packets back to it. Raises BusError when nothing serves requests here and
        concurrent.futures.TimeoutError when no reply comes within ``timeout``.
        """
        reply = self.send_self(body, title)
        try:
            return reply.result(timeout)
        finally:
            self.forget_reply(title)

    def send_self(self, body: bytes, title: str,
                  sink: Callable[[Packet], None] | None = None) -> concurrent.futures.Future[bytes]:
        """:meth:`request_self` without the wait: the future of the reply's body (call
        :meth:`forget_reply` after). ``sink`` takes the packet instead of this connection's request
        sink (process mode: one given worker, see ``Master.worker_sinks``)."""
        if self._request_sink is None:
            raise BusError("this process serves no methods")
        me = Address(self.config.unit_id, self.config.client_id, self.config.client_type)
        header = codec.Header(cmd=1, cmdtype=codec.CMDTYPE_RPC, src=me, dst=me,
                              packet_size=codec.HEADER_SIZE + len(body), datalen=len(body))
        reply = self.expect_reply(title)
        try:
            (sink or self._on_packet)(Packet(header, body))
        except BaseException:
            self.forget_reply(title)
            raise
        return reply

    def forget_reply(self, title: str) -> None:
        with self._replies_lock:
            self._replies.pop(title, None)

    def peers(self) -> list[Peer]:
        return self._peers.present()

    def choose_ipsc(self, unit: int | None = None, client: int | None = None) -> Peer:
        """A random IPSC on the bus matching whichever of unit/client is given (IpscUnavailable if none)."""
        return self._peers.choose_ipsc(unit, client)

    @property
    def connected(self) -> bool:
        return self.client.connected
