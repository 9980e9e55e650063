"""An IPSC stand-in for tests: a native client registered as an IPSC that answers CALL_FLOW packets.

It also plays the flow side of JSON-RPC (:meth:`FakeIpsc.call`, :meth:`FakeIpsc.call_rpc`): requests
go out as a flow's ``smartbusSendData(unit, client, -1, 1, 211, json)`` would, replies come back as
the NOTIFY packets a flow's ``SmartbusWaitNotify`` waits for.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import queue
import threading
from dataclasses import dataclass
from typing import Any

from sbusr.jsonrpc import errors, protocol
from sbusr.smartbus import codec, flow_messages
from sbusr.smartbus.codec import Address, Packet
from sbusr.smartbus.interface import BusError, ClientConfig, ClientHandlers
from sbusr.smartbus.native.threaded import ThreadedClient

START_TIMEOUT = 60.0  # returns as soon as ready; generous for a busy machine


@dataclass(frozen=True, slots=True)
class ReceivedCall(flow_messages.CallFlow):
    """A CALL_FLOW as received, with the address of the caller."""

    src: Address | None = None


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the stand-in answers one flow: ack code and message, then (if wanted) a result.

    ``result`` None sends no result; ``silent`` sends nothing at all.
    """

    ack: int = codec.FLOW_ACK_OK
    message: str = ""
    result: list[Any] | str | None = None
    silent: bool = False
    result_delay: float = 0.0


DEFAULT_BEHAVIOUR = Behaviour(result='["ok"]')


def _reply_title(request: dict[str, Any] | list[Any] | bytes) -> str | None:
    """Title of the reply to expect, or None for a notification (no reply comes): the driver's rule."""
    try:
        text = (protocol.decode_payload(request) if isinstance(request, bytes)
                else json.dumps(request, ensure_ascii=False))
    except errors.RpcError:
        return protocol.reply_title(None)  # undecodable: answered as a parse error, id null
    return protocol.reply_title_for(protocol.parse(text).items)


class FakeIpsc:
    """A native client registered as an IPSC (node unit, type 2) that answers CALL_FLOW packets."""

    def __init__(self, host: str, port: int, unit: int = 0, process: int = 0,
                 server: tuple[int, int] | None = None) -> None:
        if unit not in codec.IPSC_UNITS:
            raise ValueError(f"an IPSC unit is 0..15, got {unit}")
        self.unit = unit
        self.process = process
        #: the sbusr-server (unit, client) that :meth:`call` addresses
        self.server = server
        self._ids = itertools.count(1)
        self.behaviours: dict[str, Behaviour] = {}
        self.calls: list[flow_messages.CallFlow] = []
        self.notifies: queue.Queue[codec.Notify] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting: dict[str, concurrent.futures.Future[codec.Notify]] = {}
        self._timers: set[threading.Timer] = set()
        config = ClientConfig(host=host, port=port, unit_id=unit, client_id=process,
                              client_type=codec.CLIENT_TYPE_IPSC, add_info=f"fake-ipsc-{unit}-{process}")
        self.client = ThreadedClient(config, ClientHandlers(on_packet=self._on_packet))

    @property
    def address(self) -> Address:
        return Address(self.unit, self.process, codec.CLIENT_TYPE_IPSC)

    # ------------------------------------------------------------------ configuration

    def on_flow(self, flow: str, *, ack: int = codec.FLOW_ACK_OK, message: str = "",
                result: list[Any] | str | None = None, silent: bool = False,
                result_delay: float = 0.0) -> None:
        """Set how ``flow`` is answered (flows without an entry get ack 1 and result ``["ok"]``)."""
        self.behaviours[flow] = Behaviour(ack, message, result, silent, result_delay)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeIpsc:
        """Connect and wait until registered."""
        self.client.start()
        if not self.client.wait_connected(START_TIMEOUT):
            self.client.stop()
            raise RuntimeError(f"fake IPSC {self.unit}/{self.process} did not register "
                               f"within {START_TIMEOUT} s")
        return self

    def stop(self) -> None:
        with self._lock:
            timers, self._timers = self._timers, set()
            waiting, self._waiting = self._waiting, {}
        for timer in timers:
            timer.cancel()
        for fut in waiting.values():
            fut.cancel()
        self.client.stop()

    def __enter__(self) -> FakeIpsc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ receiving (client loop thread)

    def _on_packet(self, packet: Packet) -> None:
        if packet.cmdtype != codec.CMDTYPE_SYSTEM:
            return
        if packet.cmd == codec.CMD_CALL_FLOW:
            self._on_call_flow(packet)
        elif packet.cmd == codec.CMD_NOTIFY:
            notify = codec.decode_notify(packet.body, self.client.config.encoding)
            self.notifies.put(notify)
            with self._lock:
                fut = self._waiting.pop(notify.title, None)
            if fut is not None and not fut.done():
                fut.set_result(notify)

    def _on_call_flow(self, packet: Packet) -> None:
        msg = flow_messages.decode_call_flow(packet.body, self.client.config.encoding)
        call = ReceivedCall(msg.project, msg.flow, msg.params, msg.invoke_id, msg.mode, msg.event_ch,
                            src=packet.src)
        with self._lock:
            self.calls.append(call)
        behaviour = self.behaviours.get(msg.flow, DEFAULT_BEHAVIOUR)
        if behaviour.silent:
            return
        enc = self.client.config.encoding
        self.client.send_flow_ack(packet.src, msg.project, msg.invoke_id, behaviour.ack,
                                  behaviour.message.encode(enc))
        if behaviour.ack != codec.FLOW_ACK_OK or behaviour.result is None or msg.mode != 0:
            return
        result = behaviour.result if isinstance(behaviour.result, str) else json.dumps(behaviour.result)
        self._later(behaviour.result_delay, self._send_result, packet.src, msg.project, msg.invoke_id,
                    result.encode(enc))

    def _send_result(self, dst: Address, project: str, invoke_id: int, result: bytes) -> None:
        try:
            self.client.send_flow_result(dst, project, invoke_id, result)
        except BusError:
            pass  # stopped or disconnected meanwhile: the caller times out, as with a real IPSC

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        if delay <= 0:
            fn(*args)
            return

        def run() -> None:
            with self._lock:
                self._timers.discard(timer)
            fn(*args)

        timer = threading.Timer(delay, run)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    # ------------------------------------------------------------------ calling sbusr like a flow

    def call(self, method: str, params: list[Any] | dict[str, Any] | None = None, *,
             timeout: float = 30.0) -> Any:
        """Call ``method`` on the sbusr-server as a flow does; the parsed JSON-RPC reply (a dict).

        ``{"jsonrpc": "2.0", "id": ..., "result": ...}`` or ``{..., "error": {"code", "message"}}``.
        """
        if self.server is None:
            raise RuntimeError("this IPSC stand-in was made without a server address to call")
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": f"t{self.unit}-{self.process}-{next(self._ids)}",
                                   "method": method}
        if params is not None:
            request["params"] = params
        return self.call_rpc(self.server[0], self.server[1], request, timeout=timeout)

    def call_rpc(self, server_unit: int, server_client: int, request: dict[str, Any] | list[Any] | bytes,
                 timeout: float = 10.0, reply_title: str | None = None, parse_float: Any = None) -> Any:
        """Send a JSON-RPC request as a flow does and return the parsed JSON of the reply NOTIFY.

        ``parse_float=decimal.Decimal`` keeps the reply's numbers exactly as written (``1.00``).

        The reply is the NOTIFY titled with the request id (the first id of a batch), or
        ``reply_title`` when given; a notification (no id) gets no reply and returns None.
        Raises TimeoutError.
        """
        body = request if isinstance(request, bytes) else json.dumps(request).encode("utf-8")
        title = reply_title if reply_title is not None else _reply_title(request)
        fut: concurrent.futures.Future[codec.Notify] | None = None
        if title is not None:
            fut = concurrent.futures.Future()
            with self._lock:
                if title in self._waiting:
                    raise RuntimeError(f"a call titled {title!r} is already waiting")
                self._waiting[title] = fut
        try:
            self.client.send_data(Address(server_unit, server_client, -1), 1, codec.CMDTYPE_RPC, body)
            if fut is None:
                return None
            try:
                notify = fut.result(timeout)
            except concurrent.futures.TimeoutError:
                raise TimeoutError(f"no reply titled {title!r} from {server_unit}/{server_client} "
                                   f"within {timeout} s") from None
        finally:
            if title is not None:
                with self._lock:
                    self._waiting.pop(title, None)
        return json.loads(notify.param.decode("utf-8", errors="replace"), parse_float=parse_float)
