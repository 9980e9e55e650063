"""Thread facade over :class:`SmartBusClient`: implements ``interface.BusClient``.

The asyncio client runs on a private event loop in a daemon thread.  Every
method here may be called from any thread and never waits for the network:
packets are encoded in the caller's thread, ``NotConnected`` is raised at once
from a flag, and finished bytes are queued for the loop, which writes all
queued packets in one go (one loop wake-up per burst, not per packet).

Handlers run on the loop thread: keep them short and hand real work to a
queue or a pool, otherwise they stall every other packet of this client.

A packet accepted while the link is up but lost before the loop writes it
(the link dropped in between) is discarded with a debug log, like any packet
in flight when a TCP connection dies.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address
from sbusr.smartbus.interface import ClientConfig, ClientHandlers, FlowInvocation, NotConnected
from sbusr.smartbus.native.client import SmartBusClient

LOG = logging.getLogger(__name__)

_STOP_TIMEOUT = 10.0


class ThreadedClient:
    """``BusClient`` backed by the native asyncio client on its own thread.

    Keyword arguments set :class:`SmartBusClient` tunables (``heartbeat_interval``,
    ``liveness_timeout``, ``backoff_initial`` ...).
    """

    def __init__(self, config: ClientConfig, handlers: ClientHandlers | None = None, **tunables: Any) -> None:
        self.config = config
        self._connected = threading.Event()
        self._client = SmartBusClient(config, handlers, on_state=self._state_changed)
        for name, value in tunables.items():
            if not hasattr(SmartBusClient, name) or name.startswith("_"):
                raise TypeError(f"unknown SmartBusClient tunable {name!r}")
            setattr(self._client, name, value)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._loop_tid: int | None = None
        self._lock = threading.Lock()
        self._outq: list[bytes] = []
        self._flush_scheduled = False
        self._started = False
        #: start() and stop() from different threads (a signal during start-up) run one at a time
        self._lifecycle = threading.Lock()

    # ------------------------------------------------------------------ state
    @property
    def handlers(self) -> ClientHandlers:
        return self._client.handlers

    @handlers.setter
    def handlers(self, value: ClientHandlers) -> None:
        self._client.handlers = value

    @property
    def client(self) -> SmartBusClient:
        """The underlying asyncio client (use it only on the loop thread)."""
        return self._client

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def access_point(self) -> int | None:
        return self._client.access_point

    def _state_changed(self, up: bool) -> None:
        if up:
            self._connected.set()
        else:
            self._connected.clear()

    # ------------------------------------------------------------------ lifecycle
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The client's event loop (started on first use, before connecting if need be): packet
        handlers run on it, and code running on it may send without a thread hop."""
        return self._ensure_loop()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None:
                return self._loop
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                self._loop_tid = threading.get_ident()
                loop.call_soon(started.set)
                try:
                    loop.run_forever()
                finally:
                    try:
                        loop.run_until_complete(loop.shutdown_asyncgens())
                    finally:
                        loop.close()

            cfg = self.config
            thread = threading.Thread(target=run, name=f"smartbus-{cfg.unit_id}-{cfg.client_id}", daemon=True)
            self._outq = []
            self._flush_scheduled = False
            thread.start()  # before it is published: stop() may join it at once
            self._loop, self._thread = loop, thread
        started.wait()
        return loop

    def start(self) -> None:
        """Start the loop thread and begin connecting in the background; idempotent."""
        with self._lifecycle:
            if self._started:
                return
            self._started = True
            loop = self._ensure_loop()
            asyncio.run_coroutine_threadsafe(self._client.start(), loop).result()

    def stop(self) -> None:
        """Disconnect, fail pending flows and join the loop thread; idempotent.

        Called from a handler (the loop thread itself) it only schedules the
        shutdown, since a thread cannot join itself.
        """
        if threading.get_ident() == self._loop_tid:
            with self._lock:
                loop, thread = self._loop, self._thread
                self._loop = self._thread = None
            if loop is None or thread is None:
                return
            self._started = False
            self._connected.clear()

            async def shutdown() -> None:
                await self._client.stop()
                loop.stop()
            loop.create_task(shutdown())
            return
        with self._lifecycle:
            self._stop_from_outside()

    def _stop_from_outside(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        self._started = False
        self._connected.clear()
        try:
            asyncio.run_coroutine_threadsafe(self._client.stop(), loop).result(_STOP_TIMEOUT)
        except Exception:
            LOG.exception("SmartBus client did not stop cleanly")
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            pass  # loop already closed
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():
            LOG.error("SmartBus client thread %s did not exit", thread.name)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # ------------------------------------------------------------------ sending
    def _check(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or not self._client.connected:
            raise NotConnected("not connected to a SmartBus", codec.ERR_NOT_CONNECTED)
        return loop

    def _send(self, raw: bytes) -> None:
        loop = self._check()
        if threading.get_ident() == self._loop_tid:
            self._client.write(raw)  # already on the loop (a handler replying)
            return
        with self._lock:
            self._outq.append(raw)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        try:
            loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop closed under us (stop raced with this send)
            raise NotConnected("SmartBus client stopped", codec.ERR_NOT_CONNECTED) from None

    def _flush(self) -> None:
        with self._lock:
            chunks, self._outq = self._outq, []
            self._flush_scheduled = False
        if chunks:
            self._client.write_many(chunks)

    def send_raw(self, raw: bytes) -> None:
        """Send a complete, already encoded packet (the process-mode master relays workers' replies)."""
        self._send(raw)

    def send_data(self, dst: Address, cmd: int, cmdtype: int, data: bytes) -> None:
        self._check()
        self._send(self._client.build_data(dst, cmd, cmdtype, data))

    def ping(self, dst: Address, data: bytes) -> None:
        self._check()
        self._send(self._client.build_ping(dst, data))

    def send_notify(self, unit: int, client: int, project: str, title: str, param: bytes,
                    expires_ms: int = 0, mode: int = 0, client_type: int = codec.CLIENT_TYPE_IPSC) -> int:
        """Send NOTIFY (to any unit) and return its invoke id."""
        self._check()
        invoke_id, raw = self._client.build_notify(unit, client, project, title, param, expires_ms, mode,
                                                   client_type)
        self._send(raw)
        return invoke_id

    def send_flow_ack(self, dst: Address, project: str, invoke_id: int, ack: int, msg: bytes = b"") -> None:
        """IPSC role: acknowledge a CALL_FLOW (ack 1 = started)."""
        self._check()
        self._send(self._client.build_flow_ack(dst, project, invoke_id, ack, msg))

    def send_flow_result(self, dst: Address, project: str, invoke_id: int, result: bytes) -> None:
        """IPSC role: return a flow's result text."""
        self._check()
        self._send(self._client.build_flow_result(dst, project, invoke_id, result))

    def invoke_flow(self, unit: int, client: int, project: str, flow: str, params: bytes, *,
                    want_result: bool, ack_timeout: float,
                    result_timeout: float | None = None) -> FlowInvocation:
        """Start a remote flow; returns at once, the invocation's futures resolve later."""
        loop = self._check()
        inv, raw = self._client.build_flow(unit, client, project, flow, params, want_result)
        if threading.get_ident() == self._loop_tid:
            self._client.send_flow(inv, raw, ack_timeout, result_timeout)
            return inv
        # queued packets of this thread are flushed first: the flush was scheduled earlier
        try:
            loop.call_soon_threadsafe(self._client.send_flow, inv, raw, ack_timeout, result_timeout)
        except RuntimeError:
            raise NotConnected("SmartBus client stopped", codec.ERR_NOT_CONNECTED) from None
        return inv
