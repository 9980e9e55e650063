"""Development SmartBus: registers clients and routes their packets.

Stands in for the vendor's SmartBus server on a developer machine and in tests.  It
behaves like the toy bus the vendor library was verified against
(docs/smartbus-protocol.md §12), with limits added so that a misbehaving peer
(garbage, absurd sizes, a reader that never reads, silence, more than its share of
the memory budget) only loses its own connection while everyone else keeps being
served, and checks so that no client can lie to the others: only the bus sends
GLOBAL_CONNECT notices, a cmd-10 reply describes its sender and goes to a newcomer
announced to it, and every packet carries its sender's registered address as src
(see docs/smartbus-protocol-notes.md, "Trust").

The per-packet path is kept short on purpose: a benchmark measures round trips
through it, and vendor clients send about 1000 heartbeats per second each.
"""

from __future__ import annotations

import asyncio
import codecs
import enum
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sbusr.smartbus import codec, memory
from sbusr.smartbus.codec import Address, CodecError, Packet
from sbusr.util.ratelog import RateLimitedLog

__all__ = ["Bus", "BusThread", "ClientInfo"]

LOG = logging.getLogger(__name__)

#: the vendor client only needs *something* every < 14 s; one ack a second is plenty
HEARTBEAT_ACK_INTERVAL = 1.0
#: at most one "no such destination" line per this many seconds
ABSENT_LOG_INTERVAL = 5.0
#: at most one line per peer and reason for packets the bus refuses to pass on (forged, misaddressed)
REFUSED_LOG_INTERVAL = 10.0
_HEARTBEAT_BODY = 24

_monotonic = time.monotonic
_GC_CMDS = (codec.CMD_GLOBAL_CONNECT, codec.CMD_GLOBAL_CONNECT_REPLY)


class Refusal(enum.Enum):
    """Why the bus drops a packet instead of passing it on (one log line per peer and reason)."""

    FORGED_SOURCE = "src"  # src is not the sender's registered address
    NOTICE_FROM_CLIENT = "cmd9"  # GLOBAL_CONNECT notices come only from the bus
    MALFORMED_REPLY = "cmd10-bad"  # a GLOBAL_CONNECT reply that does not decode
    REPLY_ABOUT_OTHER = "cmd10-other"  # a GLOBAL_CONNECT reply that does not describe its sender
    REPLY_UNANNOUNCED = "cmd10-dst"  # a GLOBAL_CONNECT reply to a client no newcomer was announced to


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A registered client as the bus sees it."""

    unit: int
    client: int
    type: int
    add_info: str
    user: str
    peer: str
    pid: int = 0
    connect_index: int = 0
    version: str = ""

    @property
    def address(self) -> Address:
        return Address(self.unit, self.client, self.type)


#: bytes one read may take from a socket (asyncio's own default for a plain Protocol)
RECEIVE_BUFFER_SIZE = 256 * 1024


class _Connection(asyncio.BufferedProtocol):
    """One TCP peer: frames its input and hands packets to the bus.

    Reads go into the bus's one receive buffer (asyncio fills it and reports the count in the same
    callback, so connections never share it at the same time) and only the bytes read are copied
    out. A plain Protocol would allocate a fresh 256 KiB object per read, and with the mmap
    threshold the memory budget fixes (:func:`memory.map_big_buffers`) each of those is a mapping
    made and unmade per packet.
    """

    __slots__ = ("bus", "closed", "decoder", "info", "last_hb_ack", "last_rx", "owed", "peer", "src",
                 "transport")

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.decoder = codec.FrameDecoder(bus.max_packet_size)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.info: ClientInfo | None = None
        self.src: tuple[int, int, int] | None = None  # registered (type, unit, client): the only src allowed
        self.owed: set[_Connection] = set()  # newcomers announced to this client, owed one cmd-10 reply
        self.peer = "?"
        self.closed = False
        self.last_rx = _monotonic()
        self.last_hb_ack = -HEARTBEAT_ACK_INTERVAL

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.bus._conns.add(self)
        LOG.debug("connection from %s", self.peer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.bus._receive_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.bus._receive_view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_rx = _monotonic()
        bus = self.bus
        try:
            frames = self.decoder.feed_frames(data)
        except CodecError as exc:
            bus._close(self, f"framing error ({exc})", logging.WARNING)
            return
        if self.decoder.buffered > bus._check_bytes:
            bus._check_budget()
            if self.closed:
                return
        by_addr = bus._by_addr
        src = self.src
        try:
            for raw, fields in frames:
                # fields: flag, cmd, cmdtype, src type/unit/client, dst type/unit/client, size, datalen
                if (src is not None and fields[2] != codec.CMDTYPE_INTERNAL and fields[4] == src[1]
                        and fields[5] == src[2] and fields[3] == src[0]
                        and not (fields[2] == codec.CMDTYPE_SYSTEM and fields[1] in _GC_CMDS)):
                    # the hot path: user traffic from a registered client, under its own address, to one
                    # exact address is forwarded from the raw header fields, without building packets
                    du, dc = fields[7], fields[8]
                    target = by_addr.get((du, dc)) if du >= 0 and dc >= 0 else None
                    if target is not None and target is not self:
                        bus._send(target, raw)
                    else:
                        bus._route(self, codec.packet_from_frame(raw, fields), raw)
                else:
                    bus._dispatch(self, codec.packet_from_frame(raw, fields), raw)
                if self.closed:
                    break
        except Exception:  # a bug must cost one connection, not the bus
            LOG.exception("error handling a packet from %s; dropping the connection", self.peer)
            bus._close(self, "internal error", logging.ERROR)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.bus._conns.discard(self)
        self.bus._unregister(self)
        LOG.debug("connection from %s closed (%s)", self.peer, exc or "eof")


class Bus:
    """An asyncio SmartBus server.  Not thread-safe: use it from its loop (or via :class:`BusThread`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8089, unit_id: int = 0,
                 users: dict[str, str] | None = None,
                 max_packet_size: int = codec.DEFAULT_MAX_PACKET_SIZE,
                 max_write_buffer: int = 64 * 1024 * 1024,
                 idle_timeout: float = 30.0,
                 encoding: str = "gbk",
                 memory_budget: int = memory.DEFAULT_MEMORY_BUDGET,
                 process_budget: int | None = None) -> None:
        if unit_id not in codec.IPSC_UNITS:
            raise ValueError(f"bus unit id must be 0..15, got {unit_id}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if max_packet_size < codec.HEADER_SIZE:
            raise ValueError(f"max_packet_size must be at least {codec.HEADER_SIZE}")
        if max_write_buffer <= 0:
            raise ValueError("max_write_buffer must be positive")
        self.budget: memory.Budget[_Connection] = memory.Budget(memory_budget, process_budget)
        codecs.lookup(encoding)  # fail early on a bad name (LookupError)
        self.host = host
        self.unit_id = unit_id
        self.users = None if users is None else dict(users)
        self.max_packet_size = max_packet_size
        self.max_write_buffer = max_write_buffer
        self._check_bytes = self.budget.check_bytes  # read per packet: kept at hand
        self.idle_timeout = idle_timeout
        self.encoding = encoding
        self._port = port
        self._address = Address(unit_id, 0, codec.CLIENT_TYPE_NODE)
        self._server: asyncio.Server | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._conns: set[_Connection] = set()
        self._receive_view = memoryview(bytearray(RECEIVE_BUFFER_SIZE))  # every connection reads into it
        self._by_addr: dict[tuple[int, int], _Connection] = {}
        self._by_unit: dict[int, dict[int, _Connection]] = {}
        self._log_absent = RateLimitedLog(LOG, logging.INFO, ABSENT_LOG_INTERVAL)
        self._log_unregistered = RateLimitedLog(LOG, logging.DEBUG, ABSENT_LOG_INTERVAL)
        self._log_refused = RateLimitedLog(LOG, logging.WARNING, REFUSED_LOG_INTERVAL)
        self._checking_budget = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind and listen; ``port=0`` picks a free port (see :attr:`port`)."""
        if self._server is not None:
            raise RuntimeError("bus already started")
        loop = asyncio.get_running_loop()
        self._stopping = False
        if self.budget.process is not None:  # before listening: a budget too small is refused outright
            self._share_process_budget()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self._port,
                                                reuse_address=True, backlog=1024)
        if self.idle_timeout and self.idle_timeout > 0:
            self._idle_task = loop.create_task(self._reap_idle())
        LOG.debug("bus unit %d listening on %s:%d", self.unit_id, self.host, self.port)

    def _share_process_budget(self) -> None:
        """Fit the buffers and the packet size into the process budget."""
        budget = self.budget
        at_rest = budget.share_process()
        self._check_bytes = budget.check_bytes
        # a packet passing through is resident up to three times (being framed, framed, queued)
        self.max_packet_size = max(codec.HEADER_SIZE, min(self.max_packet_size, budget.buffers // 3))
        LOG.info("memory budget %.0f MiB resident: %.0f MiB at rest, up to %.1f MiB of connection buffers, "
                 "packets up to %.1f MiB", (budget.process or 0) / 2**20, at_rest / 2**20,
                 budget.buffers / 2**20, self.max_packet_size / 2**20)

    async def stop(self) -> None:
        """Close the listener and every connection (no leave notices: everyone is going)."""
        self._stopping = True
        if self._idle_task is not None:
            self._idle_task.cancel()
            try:
                await self._idle_task
            except asyncio.CancelledError:
                pass
            self._idle_task = None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self._conns):
            conn.closed = True
            if conn.transport is not None:
                conn.transport.abort()
        self._by_addr.clear()
        self._by_unit.clear()
        if server is not None:
            await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    def clients(self) -> list[ClientInfo]:
        return [conn.info for conn in self._by_addr.values() if conn.info is not None]

    # ------------------------------------------------------------------ per packet

    def _dispatch(self, conn: _Connection, pkt: Packet, raw: bytes) -> None:
        h = pkt.header
        if h.cmdtype == codec.CMDTYPE_INTERNAL:
            if h.cmd == codec.CMD_HEARTBEAT:
                self._heartbeat(conn, pkt)
                return
            if h.cmd == codec.CMD_REGISTER:
                self._register(conn, pkt)
                return
        info = conn.info
        if info is None:
            self._log_unregistered(conn.peer, "dropped cmd %d/%d from unregistered connection %s",
                                   h.cmd, h.cmdtype, conn.peer)
            return
        src = h.src
        if (src.type, src.unit, src.client) != conn.src:
            self._refuse(conn, Refusal.FORGED_SOURCE, "cmd %d/%d under src %s, not its registered address %s",
                         h.cmd, h.cmdtype, src, info.address)
            return
        if h.cmdtype == codec.CMDTYPE_SYSTEM and h.cmd in _GC_CMDS:
            self._global_connect_reply(conn, pkt, raw)
            return
        self._route(conn, pkt, raw)

    def _refuse(self, conn: _Connection, reason: Refusal, msg: str, *args: object) -> None:
        """Drop one packet the bus will not pass on; one line per peer and reason every 10 s."""
        self._log_refused.log((conn.peer, reason), "dropped a packet from %s: " + msg, conn.peer, *args)

    def _global_connect_reply(self, conn: _Connection, pkt: Packet, raw: bytes) -> None:
        """Only the bus sends cmd 9; a cmd 10 describes its sender and goes to a newcomer it was told of."""
        if pkt.cmd == codec.CMD_GLOBAL_CONNECT:
            self._refuse(conn, Refusal.NOTICE_FROM_CLIENT,
                         "GLOBAL_CONNECT notices (cmd 9) come only from the bus")
            return
        info = conn.info
        assert info is not None
        try:
            event = codec.decode_global_connect(pkt.body, self.encoding)
        except CodecError as exc:
            self._refuse(conn, Refusal.MALFORMED_REPLY, "malformed GLOBAL_CONNECT reply (%s)", exc)
            return
        if (event.unit, event.client, event.type, event.status) != (info.unit, info.client, info.type,
                                                                     codec.GC_EXISTING):
            self._refuse(conn, Refusal.REPLY_ABOUT_OTHER,
                         "GLOBAL_CONNECT reply about %s status %d; a reply may only describe"
                         " its sender %s with status %d", event.address, event.status, info.address,
                         codec.GC_EXISTING)
            return
        dst = pkt.header.dst
        target = self._by_addr.get((dst.unit, dst.client))
        if target is None or target not in conn.owed:
            self._refuse(conn, Refusal.REPLY_UNANNOUNCED,
                         "GLOBAL_CONNECT reply to %s, no newcomer announced to it", dst)
            return
        conn.owed.discard(target)
        self._send(target, raw)

    def _route(self, conn: _Connection, pkt: Packet, raw: bytes) -> None:
        dst = pkt.header.dst
        du, dc = dst.unit, dst.client
        targets: Iterable[_Connection]
        if dc >= 0:
            if du >= 0:  # the common case: one exact address
                target = self._by_addr.get((du, dc))
                if target is not None and target is not conn:
                    self._send(target, raw)
                    return
                targets = ()
            elif du == -1:
                targets = [c for (_u, cl), c in self._by_addr.items() if cl == dc and c is not conn]
            else:
                targets = ()
        elif dc == -1:
            dt = dst.type
            if du == -1:
                pool: Iterable[_Connection] = self._by_addr.values()
            else:
                unit = self._by_unit.get(du)
                pool = unit.values() if unit else ()
            targets = [c for c in pool
                       if c is not conn and c.info is not None and (dt == -1 or c.info.type == dt)]
        else:
            targets = ()
        if targets:
            for target in targets:
                if not target.closed:
                    self._send(target, raw)
            return
        h = pkt.header
        if (h.cmd == codec.CMD_PING and h.cmdtype == codec.CMDTYPE_SYSTEM and du == self.unit_id
                and dst.type == codec.CLIENT_TYPE_NODE):
            self._send(conn, codec.encode_ping(self._address, h.src, pkt.body, ack=True))
            return
        self._log_absent("absent", "no client at %s for cmd %d/%d from %s; dropped", dst, h.cmd, h.cmdtype,
                         h.src)

    def _send(self, conn: _Connection, data: bytes) -> None:
        transport = conn.transport
        transport.write(data)
        queued = transport.get_write_buffer_size()
        if queued > self.max_write_buffer:
            self._close(conn, f"slow reader: {queued} bytes queued (limit {self.max_write_buffer})",
                        logging.WARNING)
        elif queued > self._check_bytes:
            self._check_budget()

    def _check_budget(self) -> None:
        """Keep the buffered bytes (and the resident set) within the budget: biggest first out."""
        if self._checking_budget:  # closing a peer announces its leave, which sends: no recursion
            return
        self._checking_budget = True
        try:
            usage = [(c.transport.get_write_buffer_size() + c.decoder.buffered, c)
                     for c in self._conns if not c.closed and c.transport is not None]
            for conn, why in self.budget.offenders(usage):
                if not conn.closed:
                    self._close(conn, f"memory budget: {why}", logging.WARNING)
        finally:
            self._checking_budget = False

    def _heartbeat(self, conn: _Connection, pkt: Packet) -> None:
        now = conn.last_rx
        if now - conn.last_hb_ack < HEARTBEAT_ACK_INTERVAL:
            return
        conn.last_hb_ack = now
        body = pkt.body[:_HEARTBEAT_BODY].ljust(_HEARTBEAT_BODY, b"\0")
        self._send(conn, codec.encode_packet(codec.CMD_HEARTBEAT_ACK, codec.CMDTYPE_INTERNAL,
                                             self._address, pkt.header.src, body))

    # ------------------------------------------------------------------ registration

    def _register(self, conn: _Connection, pkt: Packet) -> None:
        src = pkt.header.src
        try:
            reg = codec.decode_register(pkt.body, self.encoding)
        except CodecError as exc:
            self._close(conn, f"bad REGISTER ({exc})", logging.WARNING)
            return
        code, reason = self._check_register(conn, src, reg)
        self._send(conn, codec.encode_register_ack(self._address, src, code))
        if code:
            LOG.warning("refused registration of unit %d client %d type %d (user %r) from %s: %s (%d)",
                        src.unit, src.client, src.type, reg.user, conn.peer, reason, code)
            self._close(conn, "registration refused", logging.DEBUG, flush=True)
            return
        if conn.info is not None:  # the same client registering again on its link: just re-ack
            return
        info = ClientInfo(src.unit, src.client, src.type, self._sendable(reg.add_info), reg.user, conn.peer,
                          reg.pid, reg.connect_index, reg.version)
        conn.info = info
        conn.src = (src.type, src.unit, src.client)
        self._by_addr[(src.unit, src.client)] = conn
        self._by_unit.setdefault(src.unit, {})[src.client] = conn
        LOG.info("joined: unit %d client %d type %d add_info %r user %r from %s",
                 info.unit, info.client, info.type, info.add_info, info.user, info.peer)
        self._announce(conn, info, codec.GC_CONNECTED)

    def _check_register(self, conn: _Connection, src: Address,
                        reg: codec.Register) -> tuple[int, str]:
        if src.unit not in codec.IPSC_UNITS and src.unit not in codec.NET_CLIENT_UNITS:
            return codec.ERR_UNIT, "unit out of range 0-47"
        if src.client < 0:
            return codec.ERR_UNIT, "negative client id"
        if self.users is not None:
            if reg.user not in self.users:
                return codec.ERR_USER, "unknown user"
            if self.users[reg.user] != reg.password:
                return codec.ERR_PWD, "wrong password"
        key = (src.unit, src.client)
        if conn.info is not None and (conn.info.unit, conn.info.client) != key:
            return codec.ERR_CONNECTED, f"connection already registered as {conn.info.address}"
        other = self._by_addr.get(key)
        if other is not None and other is not conn:
            return codec.ERR_CONNECTED, f"already registered from {other.peer}"
        return 0, ""

    def _sendable(self, text: str) -> str:
        """add_info as it can go back out in a GLOBAL_CONNECT (encodable, < 256 bytes)."""
        raw = text.encode(self.encoding, errors="replace")[:255]
        return raw.decode(self.encoding, errors="ignore").replace("\0", "")

    def _announce(self, subject: _Connection | None, info: ClientInfo, status: int) -> None:
        """GLOBAL_CONNECT (cmd 9) about ``info`` to every other registered client."""
        event = codec.GlobalConnect(info.unit, info.client, info.type, self.unit_id, status, info.add_info)
        for other in list(self._by_addr.values()):
            if other is subject or other.closed or other.info is None:
                continue
            try:
                data = codec.encode_global_connect(info.address, other.info.address, event,
                                                   encoding=self.encoding)
            except CodecError as exc:  # cannot happen with a _sendable add_info; never kill the bus for it
                LOG.error("cannot encode GLOBAL_CONNECT about %s: %s", info.address, exc)
                return
            if status == codec.GC_CONNECTED and subject is not None:
                other.owed.add(subject)
            self._send(other, data)

    def _unregister(self, conn: _Connection) -> None:
        info, conn.info = conn.info, None
        conn.src = None
        conn.owed.clear()
        if info is None:
            return
        for other in self._conns:
            other.owed.discard(conn)
        key = (info.unit, info.client)
        if self._by_addr.get(key) is conn:
            del self._by_addr[key]
            unit = self._by_unit.get(info.unit)
            if unit is not None:
                unit.pop(info.client, None)
                if not unit:
                    del self._by_unit[info.unit]
        if self._stopping:
            return
        LOG.info("left: unit %d client %d type %d add_info %r user %r from %s",
                 info.unit, info.client, info.type, info.add_info, info.user, info.peer)
        self._announce(conn, info, codec.GC_DISCONNECTED)

    # ------------------------------------------------------------------ dropping peers

    def _close(self, conn: _Connection, reason: str, level: int, flush: bool = False) -> None:
        """Drop one connection now; ``flush`` lets queued output (a refusal ack) go out first."""
        if conn.closed:
            return
        conn.closed = True
        LOG.log(level, "dropping connection from %s%s: %s", conn.peer,
                f" (unit {conn.info.unit} client {conn.info.client})" if conn.info else "", reason)
        if flush:
            conn.transport.close()
        else:
            conn.transport.abort()
        conn.decoder.clear()  # its half-received packet is no longer wanted: free it now
        self._unregister(conn)

    async def _reap_idle(self) -> None:
        timeout = self.idle_timeout
        interval = max(0.05, min(1.0, timeout / 4))
        while True:
            await asyncio.sleep(interval)
            limit = _monotonic() - timeout
            for conn in list(self._conns):
                if not conn.closed and conn.last_rx < limit:
                    try:
                        self._close(conn, f"idle for more than {timeout:g} s", logging.WARNING)
                    except Exception:  # keep reaping the others
                        LOG.exception("error dropping idle connection from %s", conn.peer)


class BusThread:
    """Runs a :class:`Bus` on its own event loop in a daemon thread, for embedding in sync code."""

    def __init__(self, **bus_kwargs: object) -> None:
        self.bus = Bus(**bus_kwargs)  # type: ignore[arg-type]  # bad arguments fail here, in the caller
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Return once listening; re-raise the bind error otherwise."""
        if self._thread is not None:
            raise RuntimeError("bus thread already started")
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.bus.start())
            except BaseException as exc:
                errors.append(exc)
                loop.close()
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.bus.stop())
                loop.close()

        thread = threading.Thread(target=run, name=f"smartbus-{self.bus.unit_id}", daemon=True)
        thread.start()
        ready.wait()
        if errors:
            thread.join()
            raise errors[0]
        self._loop, self._thread = loop, thread

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)  # run()'s finally stops the bus on its own loop
        thread.join(10)

    @property
    def port(self) -> int:
        return self.bus.port

    def clients(self) -> list[ClientInfo]:
        """Thread-safe snapshot of the registered clients."""
        loop = self._loop
        if loop is None:
            return []

        async def snapshot() -> list[ClientInfo]:
            return self.bus.clients()

        return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(10)

    def __enter__(self) -> BusThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
