"""ctypes binding of the vendor's ``libbusnetcli.so`` (the backend on top of it is :mod:`.client`).

Why our own binding: the wheel's Python wrapper wires the flow-result callback to
the disconnect handler and imports ``pkg_resources``; we only borrow its ``.so``.

Library facts this module relies on (``docs/smartbus-protocol.md``):

* one unit id per process, 16..47 (``Init`` returns 0, or -12 when out of range);
  several local client ids may share it, each with its own ``CreateConnect``;
* the callbacks are process-wide and run on the library's own threads; we copy
  what they carry and queue it, and never run handler code inside them;
* the library reconnects by itself (at once after a drop, every 2 s after a refused
  TCP connect) and fires ``connection_cb`` again on every registration;
* ``RemoteInvokeFlow`` takes ONE timeout (ms): the result wait uses it as is, the
  ack wait is clamped to 1..5 s; expiry is reported as ack/ret -25;
* ``SendNotify`` always addresses client type 2 (IPSC) and units 0..15;
* there is no per-client disconnect call; ``Release`` closes every link, but the
  library is not reusable afterwards (seen live: ``Init`` again returned 0, then
  ``CreateConnect`` segfaulted or hung), so this module never calls it; process exit
  closes the links.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, Header, Packet
from sbusr.smartbus.interface import BusError

LOG = logging.getLogger("sbusr.smartbus.vendor")  # one logger name for operators across the package
TRACE_LOG = logging.getLogger("sbusr.smartbus.vendor.lib")  # the library's own trace lines

PACKAGE = "hesong.ipsc.busnetcli"
LIBRARY_NAME = "libbusnetcli.so"
#: environment variable naming the .so explicitly (used when no path is passed)
LIBRARY_ENV = "SBUSR_BUSNETCLI_LIBRARY"

NO_SLAVE_PORT = 0xFFFF
ACK_WAIT_MIN_MS = 1000  # the library clamps the ack wait to this range
ACK_WAIT_MAX_MS = 5000

ONE_UNIT_MESSAGE = "libbusnetcli can be initialised once per process with one unit id"


# --------------------------------------------------------------------------- C types


class PacketHead(ctypes.Structure):
    """SMARTBUS_PACKET_HEAD (20 bytes, packed)."""

    _pack_ = 1
    _fields_ = [
        ("head_flag", ctypes.c_uint16),
        ("cmd", ctypes.c_uint8),
        ("cmdtype", ctypes.c_uint8),
        ("src_unit_client_type", ctypes.c_int8),
        ("src_unit_id", ctypes.c_int8),
        ("src_unit_client_id", ctypes.c_int8),
        ("dest_unit_client_type", ctypes.c_int8),
        ("dest_unit_id", ctypes.c_int8),
        ("dest_unit_client_id", ctypes.c_int8),
        ("reserved", ctypes.c_char * 2),
        ("packet_size", ctypes.c_int32),
        ("datalen", ctypes.c_int32),
    ]


assert ctypes.sizeof(PacketHead) == codec.HEADER_SIZE

_HEAD_P = ctypes.POINTER(PacketHead)
# Prototypes as the library's DWARF info declares them (gdb ptype).
CONNECTION_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_ubyte, ctypes.c_int, ctypes.c_int)
RECVDATA_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_ubyte, _HEAD_P, ctypes.c_void_p, ctypes.c_int)
DISCONNECT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_ubyte)
# smartbus_invokeflow_ret_cb and smartbus_invokeflow_ack_cb share one shape.
FLOW_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_ubyte, _HEAD_P, ctypes.c_char_p, ctypes.c_int,
                           ctypes.c_int, ctypes.c_char_p)
# 7 arguments: smartbus.h forgets accesspoint_unitid, the binary passes it.
GLOBAL_CONNECT_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_byte, ctypes.c_byte, ctypes.c_byte,
                                     ctypes.c_byte, ctypes.c_byte, ctypes.c_char_p)
TRACE_CB = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


# --------------------------------------------------------------------------- raw events


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """connection_cb: ``ack`` 0 = registered through ``access_point``; else an error code."""

    local_client: int
    access_point: int
    ack: int


@dataclass(frozen=True, slots=True)
class DisconnectEvent:
    local_client: int


@dataclass(frozen=True, slots=True)
class DataEvent:
    """recvdata_cb: user data, pings, notifies, unknown system packets."""

    local_client: int
    packet: Packet


@dataclass(frozen=True, slots=True)
class GlobalConnectEvent:
    """global_connect_cb (process-wide: it names no local client); text left as bytes."""

    unit: int
    client: int
    type: int
    access_point: int
    status: int
    add_info: bytes


@dataclass(frozen=True, slots=True)
class FlowReplyEvent:
    """Flow ack (``kind == "ack"``, ``code`` = ack) or result (``"ret"``, ``code`` = ret).

    ``header`` is None when the library generated the event itself (timeout -25).
    """

    kind: str
    local_client: int
    header: Header | None
    project: bytes
    invoke_id: int
    code: int
    text: bytes


VendorEvent = ConnectionEvent | DisconnectEvent | DataEvent | GlobalConnectEvent | FlowReplyEvent
EventSink = Callable[[VendorEvent], None]


def _header(head: Any) -> Header | None:
    """Copy a SMARTBUS_PACKET_HEAD* (or NULL) into a codec Header."""
    if not head:
        return None
    h = head.contents
    return Header(h.cmd, h.cmdtype,
                  Address(h.src_unit_id, h.src_unit_client_id, h.src_unit_client_type),
                  Address(h.dest_unit_id, h.dest_unit_client_id, h.dest_unit_client_type),
                  h.packet_size, h.datalen)


def c_text(raw: bytes, encoding: str) -> str:
    """A C string's text: up to the first NUL, undecodable bytes replaced."""
    return raw.split(b"\0", 1)[0].decode(encoding, errors="replace")


# --------------------------------------------------------------------------- locating the .so


def find_library(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Path of libbusnetcli.so: ``explicit``, else $SBUSR_BUSNETCLI_LIBRARY, else the wheel's copy.

    The wheel's package is located without importing it (its ``__init__`` pulls in
    the broken wrapper).  Raises FileNotFoundError with the places tried.
    """
    tried: list[str] = []
    candidates: list[Path] = []
    for value in (explicit, os.environ.get(LIBRARY_ENV)):
        if value:
            candidates.append(Path(value))
    if not candidates:
        try:
            spec = importlib.util.find_spec(PACKAGE)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            tried.append(f"package {PACKAGE} (not installed)")
        else:
            for base in spec.submodule_search_locations:
                candidates.append(Path(base, "data", "library", platform.system(), platform.machine(),
                                       LIBRARY_NAME))
    for path in candidates:
        if path.is_file():
            return path
        tried.append(str(path))
    raise FileNotFoundError(f"{LIBRARY_NAME} not found; tried: {', '.join(tried)}")


# --------------------------------------------------------------------------- the library


class VendorLibrary:
    """The process-wide libbusnetcli instance: prototypes, callbacks and event routing.

    Obtain it with :meth:`load`.  C callbacks copy their arguments into event
    objects and pass them to the sink subscribed for the local client id (global
    connect events, which name no client, go to every sink).  Sinks must only
    queue; they run on the library's threads.
    """

    _instance: VendorLibrary | None = None
    _instance_lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        self._declare()
        self._lock = threading.Lock()
        self._sinks: dict[int, EventSink] = {}
        self.unit_id: int | None = None
        self._connected_ids: set[int] = set()
        # Strong references for the process lifetime: the library keeps raw pointers.
        self._callbacks: dict[str, Any] = {
            "trace": TRACE_CB(self._on_trace),
            "trace_err": TRACE_CB(self._on_trace_err),
            "connection": CONNECTION_CB(self._on_connection),
            "recvdata": RECVDATA_CB(self._on_recvdata),
            "disconnect": DISCONNECT_CB(self._on_disconnect),
            "flow_ret": FLOW_CB(self._on_flow_ret),
            "flow_ack": FLOW_CB(self._on_flow_ack),
            "global_connect": GLOBAL_CONNECT_CB(self._on_global_connect),
        }
        # Before Init, so that nothing the library says reaches stdout.
        self.lib.SmartBusNetCli_SetTraceStr(self._callbacks["trace"], self._callbacks["trace_err"])

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> VendorLibrary:
        """The singleton; the first call decides which .so is loaded."""
        with cls._instance_lock:
            if cls._instance is None:
                if platform.system() != "Linux" or platform.machine() != "x86_64":
                    raise BusError(f"{LIBRARY_NAME} exists for Linux x86_64 only, "
                                   f"not {platform.system()} {platform.machine()}")
                try:
                    found = find_library(path)
                    cls._instance = cls(found)
                except (OSError, FileNotFoundError) as exc:
                    raise BusError(f"cannot load {LIBRARY_NAME}: {exc}") from exc
                LOG.debug("loaded %s", found)
            return cls._instance

    def _declare(self) -> None:
        lib = self.lib
        u8, i32, u16, cp, vp = ctypes.c_ubyte, ctypes.c_int, ctypes.c_ushort, ctypes.c_char_p, ctypes.c_void_p
        protos: dict[str, tuple[Any, list[Any]]] = {
            "SmartBusNetCli_Init": (i32, [u8]),
            "SmartBusNetCli_CreateConnect": (i32, [u8, i32, cp, u16, cp, u16, cp, cp, cp]),
            "SmartBusNetCli_SendData": (i32, [u8, u8, u8, i32, i32, i32, vp, i32]),
            "SmartBusNetCli_SendNotify": (i32, [u8, i32, i32, cp, cp, i32, i32, cp]),
            "SmartBusNetCli_SendPing": (i32, [u8, i32, i32, i32, vp, i32]),
            "SmartBusNetCli_RemoteInvokeFlow": (i32, [u8, i32, i32, cp, cp, i32, i32, cp]),
            "SmartBusNetCli_SetCallBackFn": (None, [CONNECTION_CB, RECVDATA_CB, DISCONNECT_CB, FLOW_CB,
                                                    GLOBAL_CONNECT_CB, vp]),
            "SmartBusNetCli_SetCallBackFnEx": (None, [cp, vp]),
            "SmartBusNetCli_SetTraceStr": (None, [TRACE_CB, TRACE_CB]),
            "SmartBusNetCli_Release": (None, []),
        }
        for name, (restype, argtypes) in protos.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes

    # ----------------------------------------------------------------- lifecycle

    def init(self, unit_id: int) -> None:
        """Init the library for ``unit_id`` (once per process) and register the callbacks."""
        with self._lock:
            if self.unit_id is not None:
                if self.unit_id != unit_id:
                    raise BusError(f"{ONE_UNIT_MESSAGE} (already {self.unit_id}, asked for {unit_id})")
                return
            if unit_id not in codec.NET_CLIENT_UNITS:
                raise BusError(f"vendor net clients need a unit id in 16..47, not {unit_id}", codec.ERR_UNIT)
            rc = self.lib.SmartBusNetCli_Init(unit_id)
            if rc != 0:
                raise BusError(f"SmartBusNetCli_Init({unit_id}) failed: {rc}", rc)
            cbs = self._callbacks
            self.lib.SmartBusNetCli_SetTraceStr(cbs["trace"], cbs["trace_err"])
            self.lib.SmartBusNetCli_SetCallBackFn(cbs["connection"], cbs["recvdata"], cbs["disconnect"],
                                                  cbs["flow_ret"], cbs["global_connect"], None)
            # The flow-ack callback has no slot in SetCallBackFn.
            self.lib.SmartBusNetCli_SetCallBackFnEx(b"smartbus_invokeflow_ack_cb",
                                                    ctypes.cast(cbs["flow_ack"], ctypes.c_void_p))
            self.unit_id = unit_id

    def subscribe(self, local_client: int, sink: EventSink) -> None:
        with self._lock:
            if local_client in self._sinks:
                raise BusError(f"local client id {local_client} is already in use in this process")
            # Copy on write: the C callbacks read the dict without a lock.
            self._sinks = {**self._sinks, local_client: sink}

    def unsubscribe(self, local_client: int) -> None:
        with self._lock:
            self._sinks = {k: v for k, v in self._sinks.items() if k != local_client}

    def create_connect(self, local_client: int, client_type: int, host: bytes, port: int,
                       slave_host: bytes = b"", slave_port: int = NO_SLAVE_PORT, user: bytes = b"",
                       password: bytes = b"", add_info: bytes = b"") -> int:
        """CreateConnect; at most once per local client id and process (the library has no undo)."""
        with self._lock:
            if self.unit_id is None:
                raise BusError("call init() before create_connect()")
            if local_client in self._connected_ids:
                raise BusError(f"local client id {local_client} already has a connection in this process "
                               "(libbusnetcli cannot close a single connection)")
            rc = self.lib.SmartBusNetCli_CreateConnect(local_client, client_type, host, port, slave_host,
                                                       slave_port, user, password, add_info)
            if rc == 0:
                self._connected_ids.add(local_client)
            return rc

    def has_connection(self, local_client: int) -> bool:
        with self._lock:
            return local_client in self._connected_ids

    # ----------------------------------------------------------------- calls (raw return codes)

    def send_data(self, local_client: int, cmd: int, cmdtype: int, dst: Address, data: bytes) -> int:
        return self.lib.SmartBusNetCli_SendData(local_client, cmd, cmdtype, dst.unit, dst.client, dst.type,
                                                data, len(data))

    def send_ping(self, local_client: int, dst: Address, data: bytes) -> int:
        return self.lib.SmartBusNetCli_SendPing(local_client, dst.unit, dst.client, dst.type, data, len(data))

    def send_notify(self, local_client: int, unit: int, process: int, project: bytes, title: bytes,
                    mode: int, expires_ms: int, param: bytes) -> int:
        return self.lib.SmartBusNetCli_SendNotify(local_client, unit, process, project, title, mode,
                                                  expires_ms, param)

    def invoke_flow(self, local_client: int, unit: int, process: int, project: bytes, flow: bytes,
                    mode: int, timeout_ms: int, params: bytes) -> int:
        return self.lib.SmartBusNetCli_RemoteInvokeFlow(local_client, unit, process, project, flow, mode,
                                                        timeout_ms, params)

    # ----------------------------------------------------------------- C callbacks (library threads)

    def _emit(self, local_client: int | None, event: VendorEvent) -> None:
        current = self._sinks  # one atomic read; never lock here (CreateConnect may hold _lock)
        sinks = list(current.values()) if local_client is None else [current.get(local_client)]
        for sink in sinks:
            if sink is not None:
                sink(event)

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        # An exception must not unwind into C; ctypes would only print it.
        try:
            fn()
        except Exception:
            LOG.exception("vendor %s callback failed", what)

    def _on_trace(self, text: bytes | None) -> None:
        if text:
            TRACE_LOG.debug("%s", text.decode("gbk", errors="replace").rstrip())

    def _on_trace_err(self, text: bytes | None) -> None:
        if text:
            TRACE_LOG.debug("error: %s", text.decode("gbk", errors="replace").rstrip())

    def _on_connection(self, _arg: Any, local_client: int, access_point: int, ack: int) -> None:
        self._guard("connection", lambda: self._emit(local_client,
                                                     ConnectionEvent(local_client, access_point, ack)))

    def _on_disconnect(self, _arg: Any, local_client: int) -> None:
        self._guard("disconnect", lambda: self._emit(local_client, DisconnectEvent(local_client)))

    def _on_recvdata(self, _arg: Any, local_client: int, head: Any, data: int | None, size: int) -> None:
        def work() -> None:
            header = _header(head)
            if header is None:
                return
            body = ctypes.string_at(data, size) if data and size > 0 else b""
            self._emit(local_client, DataEvent(local_client, Packet(header, body)))
        self._guard("recvdata", work)

    def _on_global_connect(self, _arg: Any, unit: int, client: int, ctype: int, access_point: int,
                           status: int, add_info: bytes | None) -> None:
        self._guard("global_connect", lambda: self._emit(None, GlobalConnectEvent(
            unit, client, ctype, access_point, status, add_info or b"")))

    def _flow(self, kind: str, local_client: int, head: Any, project: bytes | None, invoke_id: int,
              code: int, text: bytes | None) -> None:
        self._guard(f"flow {kind}", lambda: self._emit(local_client, FlowReplyEvent(
            kind, local_client, _header(head), project or b"", invoke_id, code, text or b"")))

    def _on_flow_ack(self, _arg: Any, local_client: int, head: Any, project: bytes | None, invoke_id: int,
                     ack: int, msg: bytes | None) -> None:
        self._flow("ack", local_client, head, project, invoke_id, ack, msg)

    def _on_flow_ret(self, _arg: Any, local_client: int, head: Any, project: bytes | None, invoke_id: int,
                     ret: int, param: bytes | None) -> None:
        self._flow("ret", local_client, head, project, invoke_id, ret, param)
