"""The vendor backend (``[smartbus] backend = vendor``): :class:`~sbusr.smartbus.interface.BusClient`
on libbusnetcli.so through the ctypes binding in :mod:`.binding`.

The library's callbacks only queue events (see :class:`~.binding.VendorLibrary`); one dispatcher
thread per client turns them into handler calls and flow-table updates, so no handler code ever
runs on the library's threads.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import queue
import threading

from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, GlobalConnect
from sbusr.smartbus.flows import FlowTable
from sbusr.smartbus.interface import (
    BusError,
    ClientConfig,
    ClientHandlers,
    FlowAckEvent,
    FlowInvocation,
    FlowOutcomeUnknown,
    NotConnected,
)
from sbusr.smartbus.vendor.binding import (
    NO_SLAVE_PORT,
    ConnectionEvent,
    DataEvent,
    DisconnectEvent,
    FlowReplyEvent,
    GlobalConnectEvent,
    VendorEvent,
    VendorLibrary,
    c_text,
)
from sbusr.util.ratelog import RateLimitedLog

LOG = logging.getLogger("sbusr.smartbus.vendor")  # one logger name for operators across the package
#: impossible global-connect notices: one WARNING per kind every 10 s (the callback names no sender)
NOTICE_LOG = RateLimitedLog(LOG, logging.WARNING, 10.0)


#: RemoteInvokeFlow's "all pending slots in use" code
ERR_RET_BUFF_FULL = -7


def check_rc(rc: int, what: str) -> int:
    """Turn a negative library return code into BusError (-2 -> NotConnected)."""
    if rc == codec.ERR_NOT_CONNECTED:
        raise NotConnected(f"{what}: not connected to a bus", rc)
    if rc < 0:
        raise BusError(f"{what} failed with code {rc}", rc)
    return rc


def _flow_timeout_ms(want_result: bool, ack_timeout: float, result_timeout: float | None) -> int:
    """The library's single timeout: the result wait when a result is wanted, else the ack wait.

    The ack wait itself is always clamp(timeout, 1 s, 5 s) inside the library.  0 would
    disable every callback for the call, so at least 1 ms is passed.
    """
    seconds = (result_timeout if result_timeout is not None else ack_timeout) if want_result else ack_timeout
    return max(1, min(int(seconds * 1000), 2**31 - 1))


class VendorClient:
    """interface.BusClient on libbusnetcli.so (``[smartbus] backend = vendor``).

    Limits inherited from the library: one unit id per process; each local client id
    can connect once per process (stop() detaches this object, but the library keeps
    that link open until the process exits, because it offers no per-link close);
    the flow ack wait is 1..5 s whatever ``ack_timeout`` says; notifies go to client
    type 2 on units 0..15 only.
    """

    def __init__(self, config: ClientConfig, handlers: ClientHandlers | None = None,
                 library_path: str | os.PathLike[str] | None = None) -> None:
        self.config = config
        self.handlers = handlers if handlers is not None else ClientHandlers()
        self._library_path = library_path
        self._lib: VendorLibrary | None = None
        self._events: queue.SimpleQueue[VendorEvent | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._connected = threading.Event()
        self._access_point: int | None = None
        self._flows = FlowTable()
        self._state_lock = threading.Lock()
        self._started = False
        # ids of notifies we encode ourselves; a range apart from the library's own counter
        self._notify_ids = itertools.count(1 << 20)

    # ----------------------------------------------------------------- state

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def access_point(self) -> int | None:
        return self._access_point

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _encode(self, text: str, field: str) -> bytes:
        try:
            raw = text.encode(self.config.encoding)
        except UnicodeEncodeError as exc:
            raise BusError(f"{field} cannot be encoded as {self.config.encoding}: {exc}") from None
        if b"\0" in raw:
            raise BusError(f"{field} contains a NUL character")
        return raw

    def _library(self) -> VendorLibrary:
        if self._lib is None or not self._started:
            raise NotConnected("vendor client is not started", codec.ERR_NOT_CONNECTED)
        return self._lib

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        with self._state_lock:
            if self._started:
                return
            cfg = self.config
            lib = VendorLibrary.load(self._library_path)
            lib.init(cfg.unit_id)
            if lib.has_connection(cfg.client_id):
                raise BusError(f"client id {cfg.client_id} already connected once in this process; "
                               "libbusnetcli cannot reconnect it (use a new process or another id)")
            lib.subscribe(cfg.client_id, self._events.put)
            self._dispatcher = threading.Thread(target=self._dispatch, name=f"vendor-bus-{cfg.client_id}",
                                                daemon=True)
            self._dispatcher.start()
            self._lib = lib
            self._started = True
            try:
                rc = lib.create_connect(
                    cfg.client_id, cfg.client_type, self._encode(cfg.host, "host"), cfg.port,
                    self._encode(cfg.slave_host or "", "slave_host"),
                    cfg.slave_port if cfg.slave_host and cfg.slave_port else NO_SLAVE_PORT,
                    self._encode(cfg.user, "user"), self._encode(cfg.password, "password"),
                    self._encode(cfg.add_info, "add_info"))
                check_rc(rc, "SmartBusNetCli_CreateConnect")
            except BaseException:
                self._shutdown_locked()
                raise

    def stop(self) -> None:
        with self._state_lock:
            self._shutdown_locked()

    def _shutdown_locked(self) -> None:
        if not self._started:
            return
        self._started = False
        assert self._lib is not None
        self._lib.unsubscribe(self.config.client_id)
        self._events.put(None)
        if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(timeout=5)
        self._dispatcher = None
        self._connected.clear()
        self._flows.fail_all(BusError("vendor client stopped"))

    # ----------------------------------------------------------------- dispatcher thread

    def _dispatch(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            try:
                self._handle(event)
            except Exception:
                LOG.exception("vendor client handler failed on %r", event)

    def _handle(self, event: VendorEvent) -> None:
        h = self.handlers
        enc = self.config.encoding
        if isinstance(event, DataEvent):
            if h.on_packet:
                h.on_packet(event.packet)
        elif isinstance(event, FlowReplyEvent):
            self._flow_event(event)
        elif isinstance(event, ConnectionEvent):
            if event.ack == 0:
                self._access_point = event.access_point
                self._connected.set()
                LOG.info("vendor client %s registered through unit %d", self.config.address,
                         event.access_point)
                if h.on_connect:
                    h.on_connect(event.access_point)
            else:
                # a taken identity (a hot standby) is retried for ever: the connection says it, once
                level = logging.DEBUG if event.ack == codec.ERR_CONNECTED else logging.WARNING
                LOG.log(level, "vendor client %s: connection failed with code %d", self.config.address,
                        event.ack)
                if h.on_connect_failed:
                    h.on_connect_failed(event.ack)
        elif isinstance(event, DisconnectEvent):
            self._connected.clear()
            LOG.info("vendor client %s disconnected", self.config.address)
            if h.on_disconnect:
                h.on_disconnect()
        elif isinstance(event, GlobalConnectEvent):
            notice = GlobalConnect(event.unit, event.client, event.type, event.access_point, event.status,
                                   c_text(event.add_info, enc))
            problem = codec.global_connect_problem(notice)
            if problem is not None:  # the library passes on whatever the bus sent
                NOTICE_LOG.log("notice", "vendor client %s: ignored a global-connect notice about %d/%d "
                               "type %d: %s", self.config.address, event.unit, event.client, event.type,
                               problem)
            elif h.on_global_connect:
                h.on_global_connect(notice)

    def _flow_event(self, event: FlowReplyEvent) -> None:
        # the library reports its own timeouts as code -25 without a packet header
        timed_out = event.code == codec.ERR_TIMEOUT and event.header is None
        if event.kind == "ack":
            if timed_out:
                self._flows.ack_timed_out(event.invoke_id)
            else:
                self._flows.acked(FlowAckEvent(event.invoke_id, event.code,
                                               c_text(event.text, self.config.encoding),
                                               event.header.src if event.header else None))
        elif timed_out:
            self._flows.result_timed_out(event.invoke_id)
        else:
            self._flows.returned(event.invoke_id, c_text(event.text, self.config.encoding))

    # ----------------------------------------------------------------- calls

    def send_data(self, dst: Address, cmd: int, cmdtype: int, data: bytes) -> None:
        if not 0 <= cmd <= 255 or not 1 <= cmdtype <= 255:
            raise BusError(f"bad cmd/cmdtype {cmd}/{cmdtype} (cmdtype 0 is reserved for link packets)")
        check_rc(self._library().send_data(self.config.client_id, cmd, cmdtype, dst, bytes(data)),
                 "SmartBusNetCli_SendData")

    def ping(self, dst: Address, data: bytes) -> None:
        rc = self._library().send_ping(self.config.client_id, dst, bytes(data))
        check_rc(rc, "SmartBusNetCli_SendPing")

    def send_notify(self, unit: int, client: int, project: str, title: str, param: bytes,
                    expires_ms: int = 0, mode: int = 0, client_type: int = 2) -> int:
        """SendNotify to an IPSC; to anyone else the same NOTIFY bytes through SendData.

        The library only addresses notifies to IPSCs (type 2, units 0..15), but sbusr also
        answers net clients (sbusr-api, tools). A NOTIFY is an ordinary cmd 15/cmdtype 1
        packet that receivers deliver like data, so for those targets we encode it ourselves.
        """
        raw = _c_payload(param, codec.MAX_NOTIFY_PARAM, "notify param")
        if client_type == codec.CLIENT_TYPE_IPSC and unit in codec.IPSC_UNITS:
            rc = self._library().send_notify(self.config.client_id, unit, client,
                                             self._encode(project, "project"), self._encode(title, "title"),
                                             mode, expires_ms, raw)
            return check_rc(rc, "SmartBusNetCli_SendNotify")
        invoke_id = next(self._notify_ids)
        dst = Address(unit, client, client_type)
        try:
            packet = codec.encode_notify(self.config.address, dst,
                                         codec.Notify(project, title, raw, invoke_id, mode, expires_ms),
                                         self.config.encoding)
        except codec.CodecError as exc:
            raise BusError(f"notify cannot be encoded: {exc}") from None
        self.send_data(dst, codec.CMD_NOTIFY, codec.CMDTYPE_SYSTEM, packet[codec.HEADER_SIZE:])
        return invoke_id

    def invoke_flow(self, unit: int, client: int, project: str, flow: str, params: bytes, *,
                    want_result: bool, ack_timeout: float,
                    result_timeout: float | None = None) -> FlowInvocation:
        """RemoteInvokeFlow.  One library timeout: see :func:`_flow_timeout_ms`."""
        raw = _c_payload(params, codec.MAX_FLOW_PARAMS, "flow params")
        lib = self._library()
        project_b, flow_b = self._encode(project, "project"), self._encode(flow, "flow")
        timeout_ms = _flow_timeout_ms(want_result, ack_timeout, result_timeout)
        # Always mode 0 ("result expected"): after a mode-1 call the library refuses the next
        # mode-0 call with -7 ("ret buff is full") although it sends the request, so the flow
        # would run while the caller is told it failed.  A result nobody asked for is ignored.
        # Hold the table's lock across the call so the dispatcher cannot see the reply first.
        with self._flows.lock:
            rc = lib.invoke_flow(self.config.client_id, unit, client, project_b, flow_b, 0, timeout_ms, raw)
            if rc == ERR_RET_BUFF_FULL:
                raise FlowOutcomeUnknown(
                    "libbusnetcli refused to track the flow call (-7, 'ret buff is full') but may have "
                    "sent it: the flow may be running; do not retry blindly", rc)
            check_rc(rc, "SmartBusNetCli_RemoteInvokeFlow")
            inv = FlowInvocation(rc)
            if want_result:
                inv.result = concurrent.futures.Future()
            self._flows.add(inv)
        return inv


def _c_payload(data: bytes, limit: int, what: str) -> bytes:
    """A payload the library passes as a C string: no NUL inside, within its length limit."""
    raw = bytes(data)
    if b"\0" in raw:
        raise BusError(f"{what}: a NUL byte cannot be sent")
    if len(raw) > limit:
        raise BusError(f"{what}: {len(raw)} bytes; at most {limit} fit", codec.ERR_DATA_TOO_LARGE)
    return raw
