"""SmartBus wire codec: bytes <-> typed messages, nothing else.

Layouts follow ``docs/smartbus-protocol.md`` (libbusnetcli 1.0.1.0465).  Every
malformed input raises :class:`CodecError` and nothing else, so the bus and the
clients can drop a bad peer without guessing which exception to catch.

Fixed-size name fields (project, flow, title, user, add_info ...) are text in a
configurable legacy encoding (GBK by default, as the vendor wrapper uses).
Variable payloads (notify param, flow parameters, ack message, flow result) stay
``bytes`` so that callers decide how strictly to decode them.  The remote-flow bodies
live in :mod:`sbusr.smartbus.flow_messages`, built on the field helpers here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

HEAD_FLAG: Final = 0x5B15
HEADER_SIZE: Final = 20
DEFAULT_ENCODING: Final = "gbk"
DEFAULT_MAX_PACKET_SIZE: Final = 32 * 1024 * 1024
VENDOR_VERSION: Final = "1.0.1.0465"

# cmdtype values
CMDTYPE_INTERNAL: Final = 0
CMDTYPE_SYSTEM: Final = 1
#: cmdtype that IPSC flows use for JSON-RPC requests (smartbusSendData(..., 211, json)).
CMDTYPE_RPC: Final = 211

# cmd values (cmdtype 0)
CMD_REGISTER: Final = 1
CMD_REGISTER_ACK: Final = 2
CMD_HEARTBEAT: Final = 5
CMD_HEARTBEAT_ACK: Final = 6
# cmd values (cmdtype 1)
CMD_PING: Final = 7
CMD_PING_ACK: Final = 8
CMD_GLOBAL_CONNECT: Final = 9
CMD_GLOBAL_CONNECT_REPLY: Final = 10
CMD_CALL_FLOW: Final = 11
CMD_CALL_FLOW_RET: Final = 12
CMD_CALL_FLOW_ACK: Final = 13
CMD_NOTIFY: Final = 15

# client types and unit ranges
CLIENT_TYPE_NODE: Final = 1
CLIENT_TYPE_IPSC: Final = 2
IPSC_UNITS: Final = range(0, 16)
NET_CLIENT_UNITS: Final = range(16, 48)

# global-connect status
GC_DISCONNECTED: Final = 0
GC_CONNECTED: Final = 1
GC_EXISTING: Final = 2

# error codes (smartbus.h SMARTBUS_ERR_*) used on the wire and by the vendor API
ERR_NOT_CONNECTED: Final = -2
ERR_AUTHOR: Final = -4
ERR_USER: Final = -5
ERR_PWD: Final = -6
ERR_CONNECTED: Final = -10
ERR_UNIT: Final = -12
ERR_DATA_TOO_LARGE: Final = -15
ERR_ESTABLISH_CONNECT: Final = -20
ERR_TIMEOUT: Final = -25

# flow ack value that means "started"
FLOW_ACK_OK: Final = 1

_HEADER = struct.Struct("<HBBbbbbbb2xii")
_REGISTER_FIXED = struct.Struct("<B20s64s128sq256s")  # 477 bytes before the node record
_NODE_HEAD = struct.Struct("<BBiiB64si64siB")  # 148 bytes
_NODE_CLI = struct.Struct("<BBii256s8s64s")  # 338 bytes
NODE_SIZE: Final = 5556
_HEARTBEAT = struct.Struct("<iiqq")
_GC_BODY = struct.Struct("<bbbbb256s")  # after the 20-byte inner header
GLOBAL_CONNECT_SIZE: Final = HEADER_SIZE + _GC_BODY.size  # 281
_NOTIFY_FIXED = struct.Struct("<B32sBii102si")  # 148

_I8 = range(-128, 128)
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1

#: limits the vendor library enforces; we enforce the same ones on encode
MAX_NOTIFY_PARAM: Final = 15999
MAX_FLOW_PARAMS: Final = 8000
#: a NOTIFY title is char[102] with a terminating NUL: at most 101 bytes in the wire encoding
MAX_NOTIFY_TITLE: Final = 101


class CodecError(ValueError):
    """Bytes or values that are not a valid SmartBus message."""


@dataclass(frozen=True, slots=True)
class Address:
    """A SmartBus endpoint: (unit id, client id, client type)."""

    unit: int
    client: int
    type: int

    def __str__(self) -> str:
        return f"{self.unit}/{self.client}(type {self.type})"


@dataclass(frozen=True, slots=True)
class Header:
    cmd: int
    cmdtype: int
    src: Address
    dst: Address
    packet_size: int
    datalen: int


@dataclass(frozen=True, slots=True)
class Packet:
    """One framed packet: header plus its meaningful payload (``datalen`` bytes)."""

    header: Header
    body: bytes

    @property
    def cmd(self) -> int:
        return self.header.cmd

    @property
    def cmdtype(self) -> int:
        return self.header.cmdtype

    @property
    def src(self) -> Address:
        return self.header.src

    @property
    def dst(self) -> Address:
        return self.header.dst


# --------------------------------------------------------------------------- header


def _check_i8(name: str, value: int) -> None:
    if value not in _I8:
        raise CodecError(f"{name}={value} does not fit a signed byte")


def encode_header(cmd: int, cmdtype: int, src: Address, dst: Address, datalen: int,
                  packet_size: int | None = None) -> bytes:
    if not 0 <= cmd <= 255 or not 0 <= cmdtype <= 255:
        raise CodecError(f"cmd/cmdtype out of range: {cmd}/{cmdtype}")
    for name, value in (("src.type", src.type), ("src.unit", src.unit), ("src.client", src.client),
                        ("dst.type", dst.type), ("dst.unit", dst.unit), ("dst.client", dst.client)):
        _check_i8(name, value)
    size = HEADER_SIZE + datalen if packet_size is None else packet_size
    if datalen < 0 or size < HEADER_SIZE + datalen or size > _I32_MAX:
        raise CodecError(f"bad sizes: packet_size={size} datalen={datalen}")
    return _HEADER.pack(HEAD_FLAG, cmd, cmdtype, src.type, src.unit, src.client,
                        dst.type, dst.unit, dst.client, size, datalen)


_ADDRESSES: dict[tuple[int, int, int], Address] = {}
_ADDRESSES_MAX = 4096


def _address(unit: int, client: int, ctype: int) -> Address:
    """A shared immutable Address: building a frozen dataclass costs more than a dict lookup,
    and a process only ever sees a handful of distinct addresses (bounded anyway)."""
    key = (unit, client, ctype)
    addr = _ADDRESSES.get(key)
    if addr is None:
        if len(_ADDRESSES) >= _ADDRESSES_MAX:
            _ADDRESSES.clear()
        addr = _ADDRESSES[key] = Address(unit, client, ctype)
    return addr


def _check_fields(fields: tuple[int, ...], max_packet_size: int) -> None:
    """Validate an unpacked header (``_HEADER`` field order)."""
    flag, size, datalen = fields[0], fields[9], fields[10]
    if flag != HEAD_FLAG:
        raise CodecError(f"bad head flag 0x{flag:04x}")
    if size < HEADER_SIZE:
        raise CodecError(f"packet_size {size} is smaller than the header")
    if size > max_packet_size:
        raise CodecError(f"packet_size {size} exceeds the limit {max_packet_size}")
    if datalen < 0 or datalen > size - HEADER_SIZE:
        raise CodecError(f"datalen {datalen} does not fit packet_size {size}")


# Per-packet construction without the frozen dataclass __init__ (which routes every field through
# object.__setattr__): write the slots through their descriptors.  Same objects, ~2.5x cheaper.
_new = object.__new__
_H_SET = tuple(getattr(Header, name).__set__
               for name in ("cmd", "cmdtype", "src", "dst", "packet_size", "datalen"))
_P_HEADER, _P_BODY = (getattr(Packet, name).__set__ for name in ("header", "body"))


def _header_of(fields: tuple[int, ...]) -> Header:
    _flag, cmd, cmdtype, st, su, sc, dt, du, dc, size, datalen = fields
    s_cmd, s_cmdtype, s_src, s_dst, s_size, s_datalen = _H_SET
    h = _new(Header)
    s_cmd(h, cmd)
    s_cmdtype(h, cmdtype)
    s_src(h, _address(su, sc, st))
    s_dst(h, _address(du, dc, dt))
    s_size(h, size)
    s_datalen(h, datalen)
    return h


def _packet(header: Header, body: bytes) -> Packet:
    p = _new(Packet)
    _P_HEADER(p, header)
    _P_BODY(p, body)
    return p


def decode_header(data: bytes | bytearray | memoryview,
                  max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> Header:
    """Decode and validate the first 20 bytes of a packet."""
    if len(data) < HEADER_SIZE:
        raise CodecError(f"header needs {HEADER_SIZE} bytes, got {len(data)}")
    fields = _HEADER.unpack_from(data)
    _check_fields(fields, max_packet_size)
    return _header_of(fields)


def packet_from_frame(raw: bytes, fields: tuple[int, ...]) -> Packet:
    """The :class:`Packet` of one frame returned by :meth:`FrameDecoder.feed_frames`."""
    return _packet(_header_of(fields), raw[HEADER_SIZE:HEADER_SIZE + fields[10]])


_DST = struct.Struct("<bb")  # dst unit, dst client
_DST_OFFSET: Final = 8  # their place in a header (after flag, cmd, cmdtype, src, dst type)


def frame_command(fields: tuple[int, ...]) -> tuple[int, int]:
    """``(cmd, cmdtype)`` of a frame's header fields (as :meth:`FrameDecoder.feed_frames` gives them)."""
    return fields[1], fields[2]


def frame_body(raw: bytes, fields: tuple[int, ...]) -> bytes:
    """The body of a frame :meth:`FrameDecoder.feed_frames` returned with its header fields."""
    return raw[HEADER_SIZE:HEADER_SIZE + fields[10]]


def frame_dst(raw: bytes) -> tuple[int, int]:
    """``(unit, client)`` a frame is addressed to, read from its header alone (a relay needs no more)."""
    unit, client = _DST.unpack_from(raw, _DST_OFFSET)
    return unit, client


def frame_of(packet: Packet) -> bytes:
    """The bytes of a decoded packet again (header re-packed, no padding), to forward it unchanged.

    No validation: the packet was decoded from a valid frame.
    """
    h = packet.header
    s, d = h.src, h.dst
    body = packet.body
    return _HEADER.pack(HEAD_FLAG, h.cmd, h.cmdtype, s.type, s.unit, s.client, d.type, d.unit, d.client,
                        HEADER_SIZE + len(body), len(body)) + body


def encode_packet(cmd: int, cmdtype: int, src: Address, dst: Address, body: bytes = b"") -> bytes:
    """A complete packet; packet_size is exactly 20 + len(body) (no padding)."""
    return encode_header(cmd, cmdtype, src, dst, len(body)) + body


def decode_packet(data: bytes, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> Packet:
    """Decode exactly one complete packet (trailing padding allowed, nothing more)."""
    header = decode_header(data, max_packet_size)
    if len(data) != header.packet_size:
        raise CodecError(f"packet_size {header.packet_size} but {len(data)} bytes given")
    return Packet(header, bytes(data[HEADER_SIZE:HEADER_SIZE + header.datalen]))


class FrameDecoder:
    """Incremental framer: feed stream bytes, get complete packets.

    Frames on ``packet_size`` like the vendor library; unlike it, a framing error
    raises :class:`CodecError` (the caller drops the connection) instead of
    leaving the stream misaligned.  Keeps at most one packet buffered.

    Hot path of the bus and every client: whole packets arriving in one read are
    sliced straight out of the received bytes (no buffer copy), and
    :meth:`feed_frames` lets a router skip building packet objects altogether.
    """

    __slots__ = ("_buf", "_fields", "_max")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_packet_size
        self._fields: tuple[int, ...] | None = None  # header of the packet being buffered

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        """Forget the partial packet (its stream is being dropped)."""
        self._buf = bytearray()
        self._fields = None

    def feed(self, data: bytes) -> list[tuple[Packet, bytes]]:
        """Return ``(packet, raw_bytes)`` pairs completed by ``data``.

        ``raw_bytes`` is the packet exactly as received (padding included), so a
        bus can forward it unchanged.
        """
        return [(_packet(_header_of(f), raw[HEADER_SIZE:HEADER_SIZE + f[10]]), raw)
                for raw, f in self.feed_frames(data)]

    def feed_frames(self, data: bytes) -> list[tuple[bytes, tuple[int, ...]]]:
        """Like :meth:`feed` but return ``(raw_bytes, header_fields)`` without building objects.

        ``header_fields`` are the validated header values in wire order: (flag, cmd, cmdtype,
        src type, src unit, src client, dst type, dst unit, dst client, packet_size, datalen).
        :func:`packet_from_frame` turns a frame into a :class:`Packet` when one is needed.
        """
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
            whole = b""
        else:
            src = whole = data if type(data) is bytes else bytes(data)
        out: list[tuple[bytes, tuple[int, ...]]] = []
        end = len(src)
        pos = 0
        fields = self._fields
        unpack = _HEADER.unpack_from
        limit = self._max
        while True:
            if fields is None:
                if end - pos < HEADER_SIZE:
                    break
                fields = unpack(src, pos)
                if (fields[0] != HEAD_FLAG or not HEADER_SIZE <= fields[9] <= limit
                        or not 0 <= fields[10] <= fields[9] - HEADER_SIZE):
                    _check_fields(fields, limit)
            size = fields[9]
            if end - pos < size:
                break
            if src is buf:  # one copy out of the buffer (a slice of a bytearray would be a second)
                with memoryview(buf) as view:
                    out.append((bytes(view[pos:pos + size]), fields))
            else:
                out.append((whole[pos:pos + size], fields))
            pos += size
            fields = None
        self._fields = fields
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += src[pos:]
        return out


# --------------------------------------------------------------------------- strings


def fixed_text(text: str, size: int, encoding: str, field: str) -> bytes:
    """Encode text into a NUL-padded char[size] that keeps a terminating NUL."""
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError as exc:
        raise CodecError(f"{field} cannot be encoded as {encoding}: {exc}") from None
    if b"\0" in raw:
        raise CodecError(f"{field} contains a NUL character")
    if len(raw) >= size:
        raise CodecError(f"{field} is {len(raw)} bytes; at most {size - 1} fit")
    return raw


def notify_title_problem(title: str, encoding: str = DEFAULT_ENCODING) -> str | None:
    """Why ``title`` cannot be a NOTIFY title (empty, NUL, unencodable, too long), or None if it can."""
    if not title:
        return "title is empty"
    try:
        fixed_text(title, MAX_NOTIFY_TITLE + 1, encoding, "title")
    except CodecError as exc:
        return str(exc)
    return None


def c_string(raw: bytes) -> bytes:
    """The bytes before the first NUL of a char[] field."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def text_of(raw: bytes, encoding: str) -> str:
    """A char[] name field as text; undecodable bytes become U+FFFD rather than failing a packet."""
    return c_string(raw).decode(encoding, errors="replace")


def c_payload(raw: bytes, field: str) -> bytes:
    """Variable C-string payload; NULs inside cannot be represented on the wire."""
    if b"\0" in raw:
        raise CodecError(f"{field} contains a NUL byte")
    return raw


def need_bytes(body: bytes, size: int, what: str) -> None:
    """Refuse a body shorter than its fixed layout, naming the message."""
    if len(body) < size:
        raise CodecError(f"{what} body needs at least {size} bytes, got {len(body)}")


# --------------------------------------------------------------------------- registration


@dataclass(frozen=True, slots=True)
class Register:
    connect_index: int
    version: str
    user: str
    password: str
    pid: int
    add_info: str
    access_point: int = -1  # node.accesspoint_unitid (-1 on the first registration)


def encode_register(src: Address, msg: Register, encoding: str = DEFAULT_ENCODING) -> bytes:
    fixed = _REGISTER_FIXED.pack(
        msg.connect_index,
        fixed_text(msg.version, 20, "ascii", "version"),
        fixed_text(msg.user, 64, encoding, "user"),
        fixed_text(msg.password, 128, encoding, "password"),
        msg.pid,
        fixed_text(msg.add_info, 256, encoding, "add_info"),
    )
    node = bytearray(NODE_SIZE)
    _NODE_HEAD.pack_into(node, 0, 1, 1, src.unit, msg.access_point, 1, b"", 0, b"", 0, 1)
    _NODE_CLI.pack_into(node, _NODE_HEAD.size, 1, 1, src.client, src.type,
                        fixed_text(msg.add_info, 256, encoding, "add_info"), b"", b"")
    return encode_packet(CMD_REGISTER, CMDTYPE_INTERNAL, src, Address(0, 0, 0), fixed + bytes(node))


def decode_register(body: bytes, encoding: str = DEFAULT_ENCODING) -> Register:
    need_bytes(body, _REGISTER_FIXED.size, "REGISTER")
    idx, version, user, password, pid, add_info = _REGISTER_FIXED.unpack_from(body)
    ap = -1
    if len(body) >= _REGISTER_FIXED.size + 10:
        (ap,) = struct.unpack_from("<i", body, _REGISTER_FIXED.size + 6)
    return Register(idx, text_of(version, "ascii"), text_of(user, encoding), text_of(password, encoding),
                    pid, text_of(add_info, encoding), ap)


def encode_register_ack(bus: Address, dst: Address, result: int) -> bytes:
    """REGISTER_ACK; ``bus.unit`` becomes the client's access point."""
    return encode_packet(CMD_REGISTER_ACK, CMDTYPE_INTERNAL, bus, dst, struct.pack("<i", result))


def decode_register_ack(body: bytes) -> int:
    need_bytes(body, 4, "REGISTER_ACK")
    return struct.unpack_from("<i", body)[0]


# --------------------------------------------------------------------------- heartbeat


@dataclass(frozen=True, slots=True)
class Heartbeat:
    count: int
    resend_count: int = 0
    time_launch: int = 0
    time_return: int = 0


def encode_heartbeat(src: Address, dst: Address, hb: Heartbeat, ack: bool = False) -> bytes:
    body = _HEARTBEAT.pack(hb.count, hb.resend_count, hb.time_launch, hb.time_return)
    return encode_packet(CMD_HEARTBEAT_ACK if ack else CMD_HEARTBEAT, CMDTYPE_INTERNAL, src, dst, body)


def decode_heartbeat(body: bytes) -> Heartbeat:
    if len(body) >= _HEARTBEAT.size:
        return Heartbeat(*_HEARTBEAT.unpack_from(body))
    need_bytes(body, 4, "HEARTBEAT")
    return Heartbeat(struct.unpack_from("<i", body)[0])


# --------------------------------------------------------------------------- global connect


@dataclass(frozen=True, slots=True)
class GlobalConnect:
    """A client joined (1), left (0) or already exists (2)."""

    unit: int
    client: int
    type: int
    access_point: int
    status: int
    add_info: str

    @property
    def address(self) -> Address:
        return Address(self.unit, self.client, self.type)


def encode_global_connect(src: Address, dst: Address, event: GlobalConnect, reply: bool = False,
                          encoding: str = DEFAULT_ENCODING) -> bytes:
    """cmd 9 (bus notice) or cmd 10 (a client's "I exist" reply); 281-byte payload."""
    cmd = CMD_GLOBAL_CONNECT_REPLY if reply else CMD_GLOBAL_CONNECT
    for name in ("unit", "client", "type", "access_point", "status"):
        _check_i8(name, getattr(event, name))
    inner = encode_header(cmd, CMDTYPE_SYSTEM, src, dst, GLOBAL_CONNECT_SIZE - HEADER_SIZE,
                          GLOBAL_CONNECT_SIZE)
    body = inner + _GC_BODY.pack(event.unit, event.client, event.type, event.access_point,
                                 event.status, fixed_text(event.add_info, 256, encoding, "add_info"))
    return encode_packet(cmd, CMDTYPE_SYSTEM, src, dst, body)


GC_STATUSES: Final = (GC_DISCONNECTED, GC_CONNECTED, GC_EXISTING)


def global_connect_problem(event: GlobalConnect) -> str | None:
    """Why a decoded notice cannot describe a real client (unit outside 0-47, bad id, unknown status)."""
    if event.unit not in IPSC_UNITS and event.unit not in NET_CLIENT_UNITS:
        return f"unit {event.unit} outside 0-47"
    if event.client < 0:
        return f"negative client id {event.client}"
    if event.status not in GC_STATUSES:
        return f"unknown status {event.status}"
    return None


def decode_global_connect(body: bytes, encoding: str = DEFAULT_ENCODING) -> GlobalConnect:
    if len(body) != GLOBAL_CONNECT_SIZE:  # the vendor library insists on exactly 281
        raise CodecError(f"GLOBAL_CONNECT body must be {GLOBAL_CONNECT_SIZE} bytes, got {len(body)}")
    unit, client, ctype, ap, status, add_info = _GC_BODY.unpack_from(body, HEADER_SIZE)
    return GlobalConnect(unit, client, ctype, ap, status, text_of(add_info, encoding))


# --------------------------------------------------------------------------- notify


@dataclass(frozen=True, slots=True)
class Notify:
    project: str
    title: str
    param: bytes
    invoke_id: int = 0
    mode: int = 0
    expires: int = 0  # milliseconds


def encode_notify(src: Address, dst: Address, msg: Notify, encoding: str = DEFAULT_ENCODING) -> bytes:
    param = c_payload(msg.param, "notify param")
    if len(param) > MAX_NOTIFY_PARAM:
        raise CodecError(f"notify param is {len(param)} bytes; at most {MAX_NOTIFY_PARAM} fit")
    title = fixed_text(msg.title, MAX_NOTIFY_TITLE + 1, encoding, "title")
    fixed = _NOTIFY_FIXED.pack(CMD_NOTIFY, fixed_text(msg.project, 32, encoding, "project"), msg.mode & 0xFF,
                               msg.invoke_id, msg.expires, title,
                               len(param))
    return encode_packet(CMD_NOTIFY, CMDTYPE_SYSTEM, src, dst, fixed + param + b"\0\0")


def decode_notify(body: bytes, encoding: str = DEFAULT_ENCODING) -> Notify:
    need_bytes(body, _NOTIFY_FIXED.size, "NOTIFY")
    _, project, mode, invoke_id, expires, title, _len = _NOTIFY_FIXED.unpack_from(body)
    return Notify(text_of(project, encoding), text_of(title, encoding), c_string(body[_NOTIFY_FIXED.size:]),
                  invoke_id, mode, expires)


# --------------------------------------------------------------------------- plain packets


def encode_data(src: Address, dst: Address, cmd: int, cmdtype: int, data: bytes) -> bytes:
    """User data (SendData).  cmdtype 0 is reserved for link packets."""
    if cmdtype == CMDTYPE_INTERNAL:
        raise CodecError("cmdtype 0 is reserved for link packets")
    return encode_packet(cmd, cmdtype, src, dst, data)


def encode_ping(src: Address, dst: Address, data: bytes, ack: bool = False) -> bytes:
    return encode_packet(CMD_PING_ACK if ack else CMD_PING, CMDTYPE_SYSTEM, src, dst, data)


def is_link_packet(header: Header) -> bool:
    return header.cmdtype == CMDTYPE_INTERNAL
