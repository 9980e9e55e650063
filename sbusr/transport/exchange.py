"""The life of one request packet, from arrival until every call in it is answered (or has run).

Replies go out through it and each call reports its end to it, so that whoever holds the packet
learns when it is done: the listener's admission count, a process-mode worker's link to its master.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sbusr.smartbus.codec import Address
from sbusr.smartbus.interface import BusError

if TYPE_CHECKING:
    from sbusr.transport.connection import BusConnection

LOG = logging.getLogger(__name__)


class Exchange:
    """One request packet, from arrival until every call in it is answered (or has run).

    The replies are sent through :meth:`send_reply` and each call's end is reported; this base
    class sends straight to the bus. A process-mode worker's link to its master subclasses it to
    tell the master when calls start and end.
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
        """An answer given without a call (a parse error, an invalid batch member)."""

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
