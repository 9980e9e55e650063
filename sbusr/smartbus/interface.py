"""The thread-friendly SmartBus client contract shared by every backend.

The driver, the CLIs and the tests talk to a :class:`BusClient`; the native
asyncio client (through its thread facade) and the vendor ``libbusnetcli.so``
binding both implement it.  Handlers are called on a backend thread and must
return quickly (queue the work): they never run user code themselves.

Vocabulary: to *invoke* a flow is the bus operation (one CALL_FLOW, the vendor's
``RemoteInvokeFlow``; :meth:`BusClient.invoke_flow` returns a :class:`FlowInvocation`).
To *start* a flow is sbusr's operation on top of it (``BusConnection.start_flow``, the
driver's ``start_flow`` call, ``POST /api/flow``): pick an IPSC, invoke, wait for the ack
and, if asked, the result.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sbusr.smartbus.codec import Address, GlobalConnect, Packet


class BusError(RuntimeError):
    """A SmartBus operation failed; ``code`` is the SMARTBUS_ERR_* value when there is one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotConnected(BusError):
    """The client has no registered link to a bus right now."""


class FlowTimeout(BusError):
    """No flow ack (or result) arrived in time."""


class FlowOutcomeUnknown(BusError):
    """The flow request may have been sent, but its ack cannot be tracked: do not retry blindly."""


def resolve(fut: concurrent.futures.Future[Any], value: Any) -> None:
    """Set a result unless the future is already done (e.g. cancelled by its caller meanwhile)."""
    if not fut.done():
        try:
            fut.set_result(value)
        except concurrent.futures.InvalidStateError:  # lost a race with cancel()
            pass


def fail(fut: concurrent.futures.Future[Any], exc: BaseException) -> None:
    """Set an exception unless the future is already done."""
    if not fut.done():
        try:
            fut.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass


@dataclass(frozen=True, slots=True)
class FlowAckEvent:
    """Outcome of a remote flow start; ``ack == 1`` means the flow started."""

    invoke_id: int
    ack: int
    message: str
    source: Address | None  # the IPSC that answered (None for a local timeout)


@dataclass(slots=True)
class FlowInvocation:
    """A remote flow call in flight.

    ``ack`` resolves to a :class:`FlowAckEvent` (or fails with FlowTimeout);
    ``result`` (only when a result was requested) resolves to the raw result
    text, normally a JSON array, or fails with FlowTimeout.
    """

    invoke_id: int
    ack: concurrent.futures.Future[FlowAckEvent] = field(default_factory=concurrent.futures.Future)
    result: concurrent.futures.Future[str] | None = None


@dataclass(slots=True)
class ClientConfig:
    """Identity and address of one SmartBus net client."""

    host: str
    port: int
    unit_id: int
    client_id: int = 0
    client_type: int = 19
    slave_host: str | None = None
    slave_port: int | None = None
    user: str = ""
    password: str = ""
    add_info: str = ""
    encoding: str = "gbk"

    @property
    def address(self) -> Address:
        return Address(self.unit_id, self.client_id, self.client_type)


@dataclass(slots=True)
class ClientHandlers:
    """Callbacks a backend fires; each may be None.  Keep them short."""

    on_connect: Callable[[int], None] | None = None  # access-point unit id
    on_connect_failed: Callable[[int], None] | None = None  # error code
    on_disconnect: Callable[[], None] | None = None
    on_packet: Callable[[Packet], None] | None = None  # user data, notify, call-flow, ping...
    on_global_connect: Callable[[GlobalConnect], None] | None = None


class BusClient(Protocol):
    """What the driver needs from a SmartBus client backend."""

    config: ClientConfig
    handlers: ClientHandlers

    @property
    def connected(self) -> bool: ...

    @property
    def access_point(self) -> int | None: ...

    def start(self) -> None:
        """Begin connecting (and reconnecting forever) in the background."""

    def stop(self) -> None:
        """Disconnect and release everything; idempotent."""

    def wait_connected(self, timeout: float) -> bool: ...

    def send_data(self, dst: Address, cmd: int, cmdtype: int, data: bytes) -> None: ...

    def send_notify(self, unit: int, client: int, project: str, title: str, param: bytes,
                    expires_ms: int = 0, mode: int = 0, client_type: int = 2) -> int:
        """Send NOTIFY and return its invoke id."""

    def ping(self, dst: Address, data: bytes) -> None: ...

    def invoke_flow(self, unit: int, client: int, project: str, flow: str, params: bytes, *,
                    want_result: bool, ack_timeout: float,
                    result_timeout: float | None = None) -> FlowInvocation: ...
