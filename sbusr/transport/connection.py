"""One SmartBus connection per process identity, shared by the RPC listener and the sender.

The oslo.messaging driver is thin glue; this module owns the SmartBus side:
which backend to use, the optional embedded development bus, the table of
peers learnt from global-connect events, routing incoming packets (JSON-RPC
requests to the listener, NOTIFY replies to waiting callers) and sending:
replies, flow starts on an IPSC (:meth:`BusConnection.start_flow`) and
requests to another sbusr-server (:meth:`BusConnection.call`).

Vocabulary: every bus peer, an IPSC process included, is addressed by its
``unit`` and ``client`` id; "server" only ever means an sbusr-server.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oslo_config import cfg

from sbusr import metrics, opts
from sbusr.jsonrpc.encoding import dumps, loads_or_text
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, GlobalConnect, Packet
from sbusr.smartbus.interface import BusClient, BusError, ClientConfig, ClientHandlers, FlowTimeout, resolve
from sbusr.util import ready
from sbusr.util.ratelog import RateLimitedLog

LOG = logging.getLogger(__name__)
#: malformed packets from a peer: one WARNING per sender and kind every 10 s, with a count of the rest
BAD_PACKET_LOG = RateLimitedLog(LOG, logging.WARNING, 10.0)

RequestSink = Callable[[Packet], None]
#: Seconds between registration attempts while the bus reports our identity taken: a hot standby
#: (a second server with the same identity) takes over this soon after the first one leaves.
STANDBY_RETRY = 1.0
ClientFactory = Callable[[cfg.ConfigOpts, ClientConfig, ClientHandlers], BusClient]
#: Seconds between two "still standing by" lines of a hot standby
STANDBY_SUMMARY_INTERVAL = 60.0


class Standby:
    """What a hot standby says: one WARNING when the bus first reports its identity taken, then one
    summary line a minute while it stays refused, and one line when it registers at last."""

    def __init__(self, where: str, address: object, clock: Callable[[], float] = time.monotonic) -> None:
        self.where = where
        self.address = address
        self._clock = clock
        self.since: float | None = None
        self._refused = 0
        self._reported = 0.0

    @property
    def standing_by(self) -> bool:
        return self.since is not None

    def refused(self) -> None:
        now = self._clock()
        if self.since is None:
            self.since, self._reported, self._refused = now, now, 0
            ready.event("standby", after=frozenset({"serving"}))
            LOG.warning("SmartBus %s: identity %s is taken by another process; standing by and retrying "
                        "every %g s (hot standby)", self.where, self.address, STANDBY_RETRY)
            return
        self._refused += 1
        if now - self._reported >= STANDBY_SUMMARY_INTERVAL:
            LOG.info("SmartBus %s: still standing by as %s for %.0f s (%d registrations refused in the "
                     "last %.0f s)", self.where, self.address, now - self.since, self._refused,
                     now - self._reported)
            self._reported, self._refused = now, 0

    def registered(self) -> None:
        if self.since is not None:
            LOG.warning("SmartBus %s: identity %s is free again; taking over after %.0f s standing by",
                        self.where, self.address, self._clock() - self.since)
            self.since = None


class Exchange:
    """One request packet, from arrival until every call in it is answered (or has run).

    The driver sends the packet's reply through :meth:`send_reply` and reports each call's end;
    this base class sends straight to the bus. A process-mode worker's link to its master
    (:mod:`sbusr.execution.link`) subclasses it to tell the master when calls start and end.
    """

    __slots__ = ("_closers", "_conn", "_lock", "_pending")

    def __init__(self, conn: BusConnection | None) -> None:
        self._conn = conn
        self._pending = 0
        self._lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []

    def send_reply(self, to: Address, title: str, body: bytes) -> None:
        if self._conn is None:
            raise BusError("no SmartBus connection to reply on")
        self._conn.send_reply(to, title, body)

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the packet is fully handled."""
        self._closers.append(fn)

    def expect(self, calls: int) -> None:
        """``calls`` messages will report through :meth:`call_done`; 0 closes at once."""
        self._pending = calls
        if calls == 0:
            self._close()

    def note(self, method: str, code: int, message: str) -> None:
        """An answer the driver gave without a call (a parse error, an invalid batch member)."""

    def call_started(self, request_id: object, method: str, timeout: float) -> None:
        """A call of this packet starts running with this limit (0 = none)."""

    def call_done(self, method: str, code: int, message: str, replied: bool = True) -> None:
        """One call ended (``code`` 0 = result, else its JSON-RPC error code); ``replied`` False
        for a notification (it ran, nobody is answered)."""
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self._close()

    def _close(self) -> None:
        for fn in self._closers:
            try:
                fn()
            except Exception:
                LOG.exception("exchange close hook failed")
        self.closed()

    def closed(self) -> None:
        """Subclass hook: the packet is fully handled."""


class IpscUnavailable(BusError):
    """No IPSC on the bus matches the requested unit/process."""

    def __init__(self, message: str, known: bool) -> None:
        super().__init__(message)
        #: True when a matching IPSC was seen but has since left the bus
        self.known = known


class FlowRejected(BusError):
    """The IPSC answered a flow start with an error ack."""

    def __init__(self, ack: int, message: str, source: Address | None) -> None:
        super().__init__(f"IPSC {source} refused the flow: ack {ack} {message}".strip(), code=ack)
        self.ack = ack
        self.ack_message = message
        self.source = source


class ReplyTimeout(BusError):
    """No reply NOTIFY arrived in time."""


@dataclass(slots=True)
class FlowStarted:
    """A flow an IPSC acknowledged (``ack`` 1) and, when it was awaited, the flow's result."""

    unit: int
    client: int
    invoke_id: int
    ack: int
    message: str
    result: Any = None  # the parsed result (its text when not JSON); only set with start_flow(wait=True)


@dataclass(frozen=True, slots=True)
class Peer:
    unit: int
    client: int
    type: int
    access_point: int
    add_info: str

    @property
    def is_ipsc(self) -> bool:
        return self.type == codec.CLIENT_TYPE_IPSC and self.unit in codec.IPSC_UNITS

    def as_dict(self) -> dict[str, object]:
        return {"unit": self.unit, "client": self.client, "type": self.type,
                "access_point": self.access_point, "add_info": self.add_info}


_client_factory: ClientFactory | None = None


def use_client_factory(factory: ClientFactory | None) -> None:
    """Make every SmartBus connection of this process use ``factory`` (a process-mode worker's
    connection is its link to the master, not the bus); None restores the configured backend."""
    global _client_factory
    _client_factory = factory


def make_client(conf: cfg.ConfigOpts, config: ClientConfig, handlers: ClientHandlers) -> BusClient:
    """The configured backend: the native client or the vendor library."""
    if _client_factory is not None:
        return _client_factory(conf, config, handlers)
    if conf.smartbus.backend == "vendor":
        from sbusr.smartbus.vendor.client import VendorClient

        library_path = opts.config_relative(conf, conf.smartbus.library_path, "library_path", "smartbus")
        return VendorClient(config, handlers, library_path=library_path or None)
    from sbusr.smartbus.native.threaded import ThreadedClient

    return ThreadedClient(config, handlers, duplicate_retry=STANDBY_RETRY)


_embedded_lock = threading.Lock()
_embedded_bus: object | None = None


def ensure_embedded_bus(host: str, port: int, encoding: str) -> None:
    """Start the development bus in this process unless one already listens there."""
    global _embedded_bus
    with _embedded_lock:
        if _embedded_bus is not None:
            return
        from sbusr.smartbus.bus import BusThread

        bus = BusThread(host=host, port=port, encoding=encoding)
        try:
            bus.start()
        except OSError as exc:
            LOG.warning("[smartbus] embedded_bus: not started, %s:%s is taken (%s); joining whatever bus "
                        "listens there, which this process did not start", host, port, exc)
            return
        LOG.warning("embedded development SmartBus listening on %s:%s (not for production)", host, port)
        _embedded_bus = bus


class BusConnection:
    """A started SmartBus client plus the bookkeeping both RPC directions need."""

    _instances: dict[tuple[object, ...], BusConnection] = {}
    _instances_lock = threading.Lock()

    def __init__(self, conf: cfg.ConfigOpts, config: ClientConfig) -> None:
        self.conf = conf
        self.config = config
        self._notify_ttl = conf.smartbus.notify_ttl  # read once: oslo.config look-ups cost µs per reply
        conf.register_mutate_hook(self._on_config_mutated)  # ...and again when a reload changes it
        self.encoding = config.encoding
        self._refs = 0
        self._peers: dict[tuple[int, int], Peer] = {}
        self._seen_ipsc: set[tuple[int, int]] = set()
        self._peers_lock = threading.Lock()
        self._replies: dict[str, concurrent.futures.Future[bytes]] = {}
        self._replies_lock = threading.Lock()
        self._request_sink: RequestSink | None = None
        self._fallback_sink: RequestSink | None = None
        self._standby = Standby(f"{config.host}:{config.port}", config.address)
        self._released = False  # for good: a released connection never registers again
        self._metrics = metrics.bus()
        self.client = make_client(conf, config, ClientHandlers(
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
                connect: bool = True, wait: bool = True) -> BusConnection:
        """The process-wide connection for this identity, started on first use.

        ``fallback_sink`` gets the request packets that arrive while no listener is installed (a
        server answers them "starting" or "shutting down" instead of dropping them); it is set
        before the client registers. With ``connect=False`` the caller starts the client itself
        (:meth:`connect`) once it is ready to serve; with ``wait=False`` it does not wait for the
        first registration.
        """
        key = (config.host, config.port, config.unit_id, config.client_id, config.client_type,
               conf.smartbus.backend)
        with cls._instances_lock:
            conn = cls._instances.get(key)
            if conn is None:
                conn = cls(conf, config)
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
        with self._peers_lock:
            self._peers.clear()
        self._metrics.bus_connected(False)
        self._metrics.set_ipsc_peers(0)

    def _on_global_connect(self, event: GlobalConnect) -> None:
        key = (event.unit, event.client)
        with self._peers_lock:
            if event.status == codec.GC_DISCONNECTED:
                self._peers.pop(key, None)
            else:
                peer = Peer(event.unit, event.client, event.type, event.access_point, event.add_info)
                self._peers[key] = peer
                if peer.is_ipsc:
                    self._seen_ipsc.add(key)
            ipsc = sum(1 for p in self._peers.values() if p.is_ipsc)
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
        result. Raises IpscUnavailable, FlowRejected (error ack), FlowTimeout, BusError.
        """
        peer = self.choose_ipsc(unit, client)
        invocation = self.client.invoke_flow(peer.unit, peer.client, project, flow,
                                             dumps(list(params)), want_result=wait,
                                             ack_timeout=ack_timeout,
                                             result_timeout=result_timeout if wait else None)
        try:
            ack = invocation.ack.result(timeout=ack_timeout + 1.0)
        except (FlowTimeout, concurrent.futures.TimeoutError):
            if invocation.result is not None:
                invocation.result.cancel()
            raise FlowTimeout(f"IPSC {peer.unit}/{peer.client} did not acknowledge the flow within "
                              f"{ack_timeout:g} s", codec.ERR_TIMEOUT) from None
        if ack.ack != codec.FLOW_ACK_OK:
            raise FlowRejected(ack.ack, ack.message, ack.source)
        started = FlowStarted(peer.unit, peer.client, invocation.invoke_id, ack.ack, ack.message)
        if wait and invocation.result is not None:
            try:
                raw = invocation.result.result(timeout=result_timeout + 1.0)
            except (FlowTimeout, concurrent.futures.TimeoutError):
                raise FlowTimeout(f"flow {project}/{flow} returned no result within {result_timeout:g} s",
                                  codec.ERR_TIMEOUT) from None
            started.result = loads_or_text(raw)
        return started

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
        with self._peers_lock:
            return sorted(self._peers.values(), key=lambda p: (p.unit, p.client))

    def choose_ipsc(self, unit: int | None = None, client: int | None = None) -> Peer:
        """A random IPSC on the bus matching whichever of unit/client is given."""
        with self._peers_lock:
            candidates = [p for p in self._peers.values() if p.is_ipsc
                          and (unit is None or p.unit == unit) and (client is None or p.client == client)]
            seen = any((unit is None or u == unit) and (client is None or c == client)
                       for u, c in self._seen_ipsc)
        if not candidates:
            wanted = f"unit {'any' if unit is None else unit}, process {'any' if client is None else client}"
            raise IpscUnavailable(f"no IPSC on the bus for {wanted}", known=seen)
        return random.choice(candidates)

    @property
    def connected(self) -> bool:
        return self.client.connected
