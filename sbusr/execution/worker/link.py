"""A worker's side of its link to the master: a :class:`~sbusr.smartbus.interface.BusClient` over a
socket, so the worker's standard RPCServer and smartbus driver serve exactly as they would on the bus.

Request packets arrive as the SmartBus frames the bus sent the master; the reply to each packet goes
back inside a :class:`~sbusr.execution.messages.Done` control frame (see there why), as the NOTIFY
frame the bus expects. :class:`LinkExchange` is the driver's per-packet hook that produces
:class:`~sbusr.execution.messages.Started` and ``Done``. The worker hands this client to its driver
by constructor (a client factory); a worker cannot ping or start flows (that takes the bus's
replies, which come to the master), so those raise :class:`~sbusr.smartbus.interface.BusError`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from sbusr.execution import messages
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, Packet
from sbusr.smartbus.interface import BusError, ClientConfig, ClientHandlers, FlowInvocation
from sbusr.smartbus.native.client import next_notify_id
from sbusr.transport.exchange import Exchange

LOG = logging.getLogger("sbusr.execution")

#: exit status of a worker whose master went away (link closed or re-parented)
ORPHAN_EXIT = 70


class LinkExchange(Exchange):
    """One request packet handed to this worker: tells the master when calls start and end."""

    __slots__ = ("_calls", "_link", "_outcomes", "_reply", "seq")

    def __init__(self, link: LinkClient, seq: int) -> None:
        super().__init__(None)
        self._link = link
        self.seq = seq
        self._calls = 0
        self._outcomes: list[messages.Outcome] = []
        self._reply = b""

    def send_reply(self, to: Address, title: str, body: bytes) -> None:
        self._reply = self._link.encode_reply(to, title, body)

    def expect(self, calls: int) -> None:
        self._calls = calls
        super().expect(calls)

    def note(self, method: str, code: int, message: str) -> None:
        self._outcomes.append(messages.Outcome(method, code, message))

    def call_started(self, request_id: object, method: str, timeout: float) -> None:
        # the master armed call_timeout when it handed the packet over; tell it only what differs
        if timeout != self._link.default_timeout or self._calls > 1:
            self._link.send(messages.Started(self.seq, timeout, method, request_id))

    def call_done(self, method: str, code: int, message: str, replied: bool = True) -> None:
        if replied:  # the outcomes are the answers the packet's reply carries
            with self._lock:
                self._outcomes.append(messages.Outcome(method, code, message))
        super().call_done(method, code, message, replied)

    def closed(self) -> None:
        self._link.send(messages.Done(self.seq, tuple(self._outcomes), self._reply))


class LinkClient:
    """BusClient over the worker's end of the master link (a connected stream socket)."""

    def __init__(self, sock: socket.socket, config: ClientConfig, handlers: ClientHandlers, *,
                 notify_ttl: int, default_timeout: float,
                 on_exit: Callable[[], None], on_lost: Callable[[], None] | None = None) -> None:
        self.config = config
        self.handlers = handlers
        self.default_timeout = default_timeout
        self._sock = sock
        self._notify_ttl = notify_ttl
        self._on_exit = on_exit
        self._on_lost = on_lost or _orphaned
        self._wlock = threading.Lock()
        self._seq = 0
        self._reader: threading.Thread | None = None
        self._stopped = False

    # ------------------------------------------------------------------ BusClient
    @property
    def connected(self) -> bool:
        return not self._stopped

    @property
    def access_point(self) -> int | None:
        return None

    def start(self) -> None:
        if self._reader is not None:
            return
        self._reader = threading.Thread(target=self._read, name="sbusr-link", daemon=True)
        self._reader.start()  # no on_connect: this is not a bus registration (nothing to log)

    def stop(self) -> None:
        self._stopped = True

    def wait_connected(self, timeout: float) -> bool:
        return True

    def send_data(self, dst: Address, cmd: int, cmdtype: int, data: bytes) -> None:
        """Sent to the bus through the master (fire and forget: replies cannot find this worker)."""
        self.send_raw(codec.encode_data(self.config.address, dst, cmd, cmdtype, data))

    def send_notify(self, unit: int, client: int, project: str, title: str, param: bytes,
                    expires_ms: int = 0, mode: int = 0, client_type: int = codec.CLIENT_TYPE_IPSC) -> int:
        invoke_id = next_notify_id()
        msg = codec.Notify(project, title, param, invoke_id, mode, expires_ms)
        self.send_raw(codec.encode_notify(self.config.address, Address(unit, client, client_type), msg,
                                          self.config.encoding))
        return invoke_id

    def ping(self, dst: Address, data: bytes) -> None:
        raise BusError("ping is not available in a worker process")

    def invoke_flow(self, unit: int, client: int, project: str, flow: str, params: bytes, *,
                    want_result: bool, ack_timeout: float,
                    result_timeout: float | None = None) -> FlowInvocation:
        raise BusError("starting IPSC flows from a worker process is not supported (use sbusr-api)")

    # ------------------------------------------------------------------ the driver's hooks
    def open_exchange(self, packet: Packet) -> LinkExchange:
        """Called by the driver on this client's reader thread, for the packet it is delivering."""
        return LinkExchange(self, self._seq)

    def encode_reply(self, to: Address, title: str, body: bytes) -> bytes:
        msg = codec.Notify("", title, body, next_notify_id(), 0, self._notify_ttl)
        return codec.encode_notify(self.config.address, to, msg, self.config.encoding)

    # ------------------------------------------------------------------ link
    def send(self, msg: messages.Message) -> None:
        self.send_raw(messages.encode(msg))

    def send_raw(self, raw: bytes) -> None:
        with self._wlock:
            try:
                self._sock.sendall(raw)
            except OSError:
                self._on_lost()

    def _read(self) -> None:
        decoder = codec.FrameDecoder()
        on_packet = self.handlers.on_packet
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                for raw, fields in decoder.feed_frames(data):
                    if messages.is_control(fields):
                        self._control(messages.decode_frame(raw, fields))
                        continue
                    self._seq += 1
                    if on_packet is not None:
                        on_packet(codec.packet_from_frame(raw, fields))
        except (OSError, codec.CodecError, messages.MessageError) as exc:
            LOG.error("link to the master broken: %s", exc)
        self._on_lost()

    def _control(self, msg: messages.Message) -> None:
        if isinstance(msg, messages.Exit):
            self._on_exit()
        else:
            LOG.warning("unexpected control message from the master: %r", msg)


def _orphaned() -> None:
    """The master is gone (or killed this link): stop at once, even in the middle of a call."""
    os._exit(ORPHAN_EXIT)
