"""Pure-Python SmartBus net client on asyncio (the "native" backend).

It speaks the wire protocol of ``libbusnetcli.so`` 1.0.1.0465 (see
``docs/smartbus-protocol.md``) through :mod:`sbusr.smartbus.codec` and keeps
the vendor library's observable behaviour where callers depend on it
(registration, global-connect replies, automatic ping acks, the dst filter,
flow ack/result matching).  Deliberate differences from the vendor library:

* Heartbeats go out once per ``heartbeat_interval`` (1 s), not every millisecond.
* A registration refused with a code other than ``ERR_CONNECTED`` (bad user,
  password or unit) is retried with the capped backoff and a WARNING log; the
  vendor library silently gives up until the application reconnects by hand.
* Only one link is kept: the master is tried first and, on failure, the client
  alternates between master and slave.  The vendor keeps both links registered.
* A flow ack with an error code fails the pending result at once with
  ``BusError(code=ack)``; the vendor waits for the result timeout.
* Sending without a registered link raises :class:`NotConnected` instead of
  returning -2.

Everything here runs on one event loop; :mod:`sbusr.smartbus.native.threaded` wraps it
for threaded callers.  All ``*_nowait``/``build_*`` helpers are synchronous so
the thread facade can encode in the caller's thread and only hand finished
bytes to the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from sbusr.smartbus import codec, flow_messages
from sbusr.smartbus.codec import Address, Packet
from sbusr.smartbus.flow_messages import CallFlow, FlowAck, FlowResult
from sbusr.smartbus.flows import FlowTable
from sbusr.smartbus.interface import (
    BusError,
    ClientConfig,
    ClientHandlers,
    FlowAckEvent,
    FlowInvocation,
    NotConnected,
    fail,
)
from sbusr.util.ratelog import RateLimitedLog

LOG = logging.getLogger(__name__)
#: malformed or impossible packets from the bus: one WARNING per sender and kind every 10 s
BAD_PACKET_LOG = RateLimitedLog(LOG, logging.WARNING, 10.0)

#: result wait used when invoke_flow(want_result=True) gets no result_timeout
DEFAULT_RESULT_TIMEOUT = 60.0
#: a refused registration is logged as WARNING at most this often (same code)
REJECT_WARN_INTERVAL = 60.0

_I32_MAX = 2**31 - 1
# Per-process counters, as in the vendor library (ids stay unique across clients of a process).
_flow_ids = itertools.count(1)
_notify_ids = itertools.count(1)


def _next_id(counter: itertools.count[int]) -> int:
    """Next positive int32 id; ``next()`` on itertools.count is atomic under the GIL."""
    return (next(counter) - 1) % _I32_MAX + 1


def next_flow_id() -> int:
    return _next_id(_flow_ids)


def next_notify_id() -> int:
    return _next_id(_notify_ids)


def _call(handler: Callable[..., None] | None, *args: Any) -> None:
    """Run a user handler; a buggy handler must not take the link down."""
    if handler is None:
        return
    try:
        handler(*args)
    except Exception:
        LOG.exception("SmartBus handler %r failed", handler)


class _Link(asyncio.Protocol):
    """One TCP connection to a bus: registration, heartbeats, framing."""

    def __init__(self, client: SmartBusClient, index: int, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.index = index  # 0 master, 1 slave
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.decoder = codec.FrameDecoder(client.max_packet_size)
        self.registered = False
        self.reject_code: int | None = None
        self.last_recv = loop.time()
        self.started = self.last_recv
        self.hb_count = 0
        self.hb_timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.last_recv = self.started = self.loop.time()
        transport.write(self.client.build_register(self.index))
        self.hb_timer = self.loop.call_later(self.client.heartbeat_interval, self._tick)

    def data_received(self, data: bytes) -> None:
        self.last_recv = self.loop.time()
        try:
            frames = self.decoder.feed(data)
        except codec.CodecError as exc:
            LOG.warning("SmartBus link %d: bad data from the bus (%s); dropping the link", self.index, exc)
            self.abort()
            return
        dispatch = self.client._dispatch
        for pkt, _raw in frames:
            dispatch(self, pkt)
            if self.transport is None:  # dropped while dispatching
                break

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.hb_timer is not None:
            self.hb_timer.cancel()
            self.hb_timer = None
        self.client._link_lost(self, exc)
        if not self.done.done():
            self.done.set_result(None)

    # -- helpers
    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _tick(self) -> None:
        """Heartbeat plus the vendor's liveness rule (nothing received for 14 s -> drop)."""
        transport = self.transport
        if transport is None:
            return
        client = self.client
        now = self.loop.time()
        if now - self.last_recv > client.liveness_timeout:
            LOG.warning("SmartBus link %d: nothing received for %.0f s; dropping the link",
                        self.index, client.liveness_timeout)
            self.abort()
            return
        if not self.registered and now - self.started > client.liveness_timeout:
            LOG.warning("SmartBus link %d: no REGISTER_ACK within %.0f s; dropping the link",
                        self.index, client.liveness_timeout)
            self.abort()
            return
        ap = client._access_point
        dst = Address(ap if ap is not None else -1, -1, codec.CLIENT_TYPE_NODE)
        hb = codec.Heartbeat(self.hb_count, 0, int(time.time()), 0)
        self.hb_count += 1
        transport.write(codec.encode_heartbeat(client.address, dst, hb))
        self.hb_timer = self.loop.call_later(client.heartbeat_interval, self._tick)


class SmartBusClient:
    """Asyncio SmartBus net client; create, ``await start()``, use, ``await stop()``.

    Tunables are instance attributes (set them before ``start``).  Handlers run
    on the event loop: keep them short.  ``on_state(bool)`` is an internal hook
    (used by the thread facade) called when the registered state changes,
    before the public handlers.
    """

    heartbeat_interval = 1.0
    liveness_timeout = 14.0
    backoff_initial = 0.1
    backoff_max = 2.0
    duplicate_retry = 2.0  # after REGISTER_ACK ERR_CONNECTED, like the vendor
    connect_timeout = 5.0
    close_timeout = 1.0  # stop(): how long the link may take to send what is written, then it is cut
    max_packet_size = codec.DEFAULT_MAX_PACKET_SIZE

    def __init__(self, config: ClientConfig, handlers: ClientHandlers | None = None, *,
                 on_state: Callable[[bool], None] | None = None) -> None:
        self.config = config
        self.handlers = handlers if handlers is not None else ClientHandlers()
        self.address = config.address
        self._on_state = on_state
        self._enc = config.encoding
        self._addresses: list[tuple[str, int, int]] = [(config.host, config.port, 0)]
        if config.slave_host and config.slave_port not in (None, 0, 0xFFFF):
            self._addresses.append((config.slave_host, int(config.slave_port or 0), 1))
        self._link: _Link | None = None  # the registered link, if any
        self._current: _Link | None = None  # the link being set up or used
        self._access_point: int | None = None
        self._connected_event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._flows = FlowTable()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_reject: tuple[int, float] = (0, 0.0)  # (code, loop time) of the last WARNING

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def access_point(self) -> int | None:
        return self._access_point

    @property
    def pending_flows(self) -> int:
        return len(self._flows)

    async def start(self) -> None:
        """Begin connecting (and reconnecting forever) in the background."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._connected_event = asyncio.Event()
        self._stopping = False
        self._task = self._loop.create_task(self._run(), name="smartbus-client")

    async def stop(self) -> None:
        """Close the link, stop reconnecting and fail pending flows; idempotent.

        on_disconnect does not fire for a deliberate stop.
        """
        self._stopping = True
        task, self._task = self._task, None
        current = self._current
        if current is not None and current.transport is not None:
            # close, not abort: the replies already written (a stopping server's last answers) go out
            current.transport.close()
            try:
                async with asyncio.timeout(self.close_timeout):
                    await asyncio.shield(current.done)
            except TimeoutError:
                current.abort()
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._set_link(None)
        self._flows.fail_all(BusError("SmartBus client stopped", codec.ERR_NOT_CONNECTED))
        await asyncio.sleep(0)  # let the aborted transport's connection_lost run

    async def wait_connected(self, timeout: float) -> bool:
        if self._link is not None:
            return True
        if self._connected_event is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._connected_event.wait()
        except TimeoutError:
            return False
        return self._link is not None

    # ------------------------------------------------------------------ connection loop
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.backoff_initial
        reported_failure = False
        idx = 0
        while not self._stopping:
            host, port, index = self._addresses[idx]
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, link = await loop.create_connection(functools.partial(_Link, self, index, loop),
                                                           host, port)
            except (OSError, TimeoutError) as exc:
                LOG.debug("SmartBus connect to %s:%d failed: %s", host, port, exc)
                if not reported_failure:
                    reported_failure = True
                    LOG.info("SmartBus: cannot connect to %s:%d (%s); retrying in the background",
                             host, port, exc or "timeout")
                    _call(self.handlers.on_connect_failed, codec.ERR_ESTABLISH_CONNECT)
                idx = (idx + 1) % len(self._addresses)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            self._current = link
            try:
                await asyncio.shield(link.done)
            finally:
                self._current = None
                link.abort()
            if link.registered:
                delay = self.backoff_initial
                reported_failure = False
                wait = delay
            elif link.reject_code == codec.ERR_CONNECTED:
                idx = (idx + 1) % len(self._addresses)
                wait = self.duplicate_retry
            else:
                idx = (idx + 1) % len(self._addresses)
                wait = delay
                delay = min(delay * 2, self.backoff_max)
            if not self._stopping:
                await asyncio.sleep(wait)

    def _set_link(self, link: _Link | None) -> None:
        was = self._link is not None
        self._link = link
        now = link is not None
        if self._connected_event is not None:
            if now:
                self._connected_event.set()
            else:
                self._connected_event.clear()
        if was != now and self._on_state is not None:
            _call(self._on_state, now)

    def _link_lost(self, link: _Link, exc: Exception | None) -> None:
        if link is not self._link:
            return
        self._set_link(None)
        if self._stopping:
            return
        LOG.warning("SmartBus link %d to the bus lost%s; reconnecting", link.index,
                    f" ({exc})" if exc else "")
        _call(self.handlers.on_disconnect)

    # ------------------------------------------------------------------ receiving
    def _dispatch(self, link: _Link, pkt: Packet) -> None:
        h = pkt.header
        cmdtype = h.cmdtype
        cmd = h.cmd
        if cmdtype == codec.CMDTYPE_INTERNAL:
            if cmd == codec.CMD_REGISTER_ACK:
                self._on_register_ack(link, pkt)
            # heartbeat acks only feed liveness (done in data_received); other link packets are dropped
            return
        if cmdtype == codec.CMDTYPE_SYSTEM:
            if cmd == codec.CMD_GLOBAL_CONNECT or cmd == codec.CMD_GLOBAL_CONNECT_REPLY:
                self._on_global_connect(link, pkt)
                return
            if cmd == codec.CMD_PING and link.transport is not None:
                # the vendor library answers before its dst filter
                try:
                    link.transport.write(codec.encode_ping(self.address, h.src, pkt.body, ack=True))
                except codec.CodecError as exc:
                    LOG.warning("SmartBus: cannot answer ping from %s: %s", h.src, exc)
        dst = h.dst
        if dst.client < 0 and dst.type != self.address.type:
            return  # vendor dst filter: with client -1 the type must be ours
        if cmdtype == codec.CMDTYPE_SYSTEM:
            if cmd == codec.CMD_CALL_FLOW_ACK:
                self._on_flow_ack(pkt)
                return
            if cmd == codec.CMD_CALL_FLOW_RET:
                self._on_flow_ret(pkt)
                return
        on_packet = self.handlers.on_packet
        if on_packet is not None:
            try:
                on_packet(pkt)
            except Exception:
                LOG.exception("SmartBus on_packet handler failed")

    def _on_register_ack(self, link: _Link, pkt: Packet) -> None:
        if link.registered or link.reject_code is not None:
            LOG.debug("SmartBus: extra REGISTER_ACK ignored")
            return
        try:
            result = codec.decode_register_ack(pkt.body)
        except codec.CodecError as exc:
            LOG.warning("SmartBus: malformed REGISTER_ACK (%s); dropping the link", exc)
            link.abort()
            return
        if result == 0:
            link.registered = True
            self._access_point = pkt.src.unit
            self._last_reject = (0, 0.0)
            self._set_link(link)
            LOG.info("SmartBus: registered as %s at access point unit %d (link %d)",
                     self.address, self._access_point, link.index)
            _call(self.handlers.on_connect, self._access_point)
            return
        link.reject_code = result
        if result == codec.ERR_CONNECTED:
            LOG.debug("SmartBus: bus reports %s already connected (%d); retrying in %.0f s",
                     self.address, result, self.duplicate_retry)
        else:
            # retried every <= backoff_max seconds: warn when the code changes, then once a minute
            now = link.loop.time()
            level = logging.DEBUG
            if result != self._last_reject[0] or now - self._last_reject[1] >= REJECT_WARN_INTERVAL:
                self._last_reject = (result, now)
                level = logging.WARNING
            LOG.log(level, "SmartBus: registration of %s refused with code %d (bad user, password or unit?);"
                    " retrying", self.address, result)
        _call(self.handlers.on_connect_failed, result)
        link.abort()

    def _on_global_connect(self, link: _Link, pkt: Packet) -> None:
        try:
            event = codec.decode_global_connect(pkt.body, self._enc)
        except codec.CodecError as exc:
            BAD_PACKET_LOG.log((pkt.src, "global connect"), "SmartBus: malformed global-connect packet from "
                               "%s: %s", pkt.src, exc)
            return
        problem = codec.global_connect_problem(event)
        if problem is not None:
            # keyed by kind only: a notice's src names its subject, and all of them come over the bus link
            BAD_PACKET_LOG.log("notice", "SmartBus: ignored a global-connect notice about %d/%d type %d: %s",
                               event.unit, event.client, event.type, problem)
            return
        me = self.address
        if event.unit == me.unit and event.client == me.client:
            return
        if (pkt.cmd == codec.CMD_GLOBAL_CONNECT and event.status == codec.GC_CONNECTED
                and link.transport is not None):
            ap = self._access_point
            mine = codec.GlobalConnect(me.unit, me.client, me.type, ap if ap is not None else -1,
                                       codec.GC_EXISTING, self.config.add_info)
            try:
                link.transport.write(codec.encode_global_connect(me, event.address, mine, reply=True,
                                                                 encoding=self._enc))
            except codec.CodecError as exc:
                LOG.warning("SmartBus: cannot answer the global connect of %s: %s", event.address, exc)
        _call(self.handlers.on_global_connect, event)

    def _on_flow_ack(self, pkt: Packet) -> None:
        try:
            msg = flow_messages.decode_flow_ack(pkt.body, self._enc)
        except codec.CodecError as exc:
            BAD_PACKET_LOG.log((pkt.src, "flow ack"), "SmartBus: malformed flow ack from %s: %s", pkt.src,
                               exc)
            return
        self._flows.acked(FlowAckEvent(msg.invoke_id, msg.ack, msg.msg.decode(self._enc, errors="replace"),
                                       pkt.src))

    def _on_flow_ret(self, pkt: Packet) -> None:
        try:
            msg = flow_messages.decode_flow_result(pkt.body, self._enc)
        except codec.CodecError as exc:
            BAD_PACKET_LOG.log((pkt.src, "flow result"), "SmartBus: malformed flow result from %s: %s",
                               pkt.src, exc)
            return
        self._flows.returned(msg.invoke_id, msg.param.decode(self._enc, errors="replace"))

    # ------------------------------------------------------------------ packet builders (any thread)
    def build_register(self, index: int) -> bytes:
        ap = self._access_point
        msg = codec.Register(index, codec.VENDOR_VERSION, self.config.user, self.config.password,
                             os.getpid(), self.config.add_info, ap if ap is not None else -1)
        return codec.encode_register(self.address, msg, self._enc)

    def build_data(self, dst: Address, cmd: int, cmdtype: int, data: bytes) -> bytes:
        return codec.encode_data(self.address, dst, cmd, cmdtype, data)

    def build_ping(self, dst: Address, data: bytes) -> bytes:
        return codec.encode_ping(self.address, dst, data)

    def build_notify(self, unit: int, client: int, project: str, title: str, param: bytes,
                     expires_ms: int = 0, mode: int = 0,
                     client_type: int = codec.CLIENT_TYPE_IPSC) -> tuple[int, bytes]:
        invoke_id = next_notify_id()
        msg = codec.Notify(project, title, param, invoke_id, mode, expires_ms)
        dst = Address(unit, client, client_type)
        return invoke_id, codec.encode_notify(self.address, dst, msg, self._enc)

    def build_flow_ack(self, dst: Address, project: str, invoke_id: int, ack: int, msg: bytes) -> bytes:
        return flow_messages.encode_flow_ack(self.address, dst, FlowAck(project, invoke_id, ack, msg),
                                             self._enc)

    def build_flow_result(self, dst: Address, project: str, invoke_id: int, result: bytes) -> bytes:
        return flow_messages.encode_flow_result(self.address, dst, FlowResult(project, invoke_id, result),
                                                self._enc)

    def build_flow(self, unit: int, client: int, project: str, flow: str, params: bytes,
                   want_result: bool) -> tuple[FlowInvocation, bytes]:
        """Encode a CALL_FLOW and make its (not yet registered) invocation."""
        if unit not in codec.IPSC_UNITS:
            raise BusError(f"flow target unit {unit} is not an IPSC unit (0..15)", codec.ERR_UNIT)
        invoke_id = next_flow_id()
        msg = CallFlow(project, flow, params, invoke_id, 0 if want_result else 1)
        raw = flow_messages.encode_call_flow(self.address, Address(unit, client, codec.CLIENT_TYPE_IPSC),
                                             msg, self._enc)
        inv = FlowInvocation(invoke_id)
        if want_result:
            inv.result = concurrent.futures.Future()
        return inv, raw

    # ------------------------------------------------------------------ sending (loop thread)
    def write(self, raw: bytes) -> None:
        """Send finished bytes on the registered link or raise NotConnected."""
        link = self._link
        if link is None or link.transport is None:
            raise NotConnected("not connected to a SmartBus", codec.ERR_NOT_CONNECTED)
        link.transport.write(raw)

    def write_many(self, chunks: list[bytes]) -> None:
        """Facade flush: send queued packets; drop them (debug log) if the link vanished meanwhile."""
        link = self._link
        if link is None or link.transport is None:
            LOG.debug("SmartBus: link lost before %d queued packet(s) went out; dropped", len(chunks))
            return
        link.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def send_flow(self, inv: FlowInvocation, raw: bytes, ack_timeout: float,
                  result_timeout: float | None) -> None:
        """Send a built CALL_FLOW and track it in the flow table with its timers (loop thread)."""
        try:
            self.write(raw)
        except NotConnected as exc:
            fail(inv.ack, exc)
            if inv.result is not None:
                fail(inv.result, exc)
            return
        loop = self._loop or asyncio.get_running_loop()
        flows = self._flows
        result_timer = None
        if inv.result is not None:
            wait = DEFAULT_RESULT_TIMEOUT if result_timeout is None else result_timeout
            result_timer = loop.call_later(wait, flows.result_timed_out, inv.invoke_id)
        flows.add(inv, loop.call_later(ack_timeout, flows.ack_timed_out, inv.invoke_id), result_timer)

    # ------------------------------------------------------------------ async API
    async def send_data(self, dst: Address, cmd: int, cmdtype: int, data: bytes) -> None:
        self.write(self.build_data(dst, cmd, cmdtype, data))

    async def ping(self, dst: Address, data: bytes) -> None:
        self.write(self.build_ping(dst, data))

    async def send_notify(self, unit: int, client: int, project: str, title: str, param: bytes,
                          expires_ms: int = 0, mode: int = 0,
                          client_type: int = codec.CLIENT_TYPE_IPSC) -> int:
        """Send NOTIFY to any unit (sbusr also replies to net clients); returns its invoke id."""
        self._require_link()
        invoke_id, raw = self.build_notify(unit, client, project, title, param, expires_ms, mode, client_type)
        self.write(raw)
        return invoke_id

    async def send_flow_ack(self, dst: Address, project: str, invoke_id: int, ack: int,
                            msg: bytes = b"") -> None:
        """IPSC role: acknowledge a CALL_FLOW (ack 1 = started)."""
        self.write(self.build_flow_ack(dst, project, invoke_id, ack, msg))

    async def send_flow_result(self, dst: Address, project: str, invoke_id: int, result: bytes) -> None:
        """IPSC role: return a flow's result (JSON array text by convention)."""
        self.write(self.build_flow_result(dst, project, invoke_id, result))

    async def invoke_flow(self, unit: int, client: int, project: str, flow: str, params: bytes, *,
                          want_result: bool, ack_timeout: float,
                          result_timeout: float | None = None) -> FlowInvocation:
        """Start a remote flow on an IPSC (unit 0..15); the futures resolve later.

        ``result_timeout`` defaults to :data:`DEFAULT_RESULT_TIMEOUT` when a
        result is wanted.  The futures are thread-safe concurrent futures.
        """
        self._require_link()
        inv, raw = self.build_flow(unit, client, project, flow, params, want_result)
        self.send_flow(inv, raw, ack_timeout, result_timeout)
        return inv

    def _require_link(self) -> None:
        if self._link is None:
            raise NotConnected("not connected to a SmartBus", codec.ERR_NOT_CONNECTED)
