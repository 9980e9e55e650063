"""Who is on the bus: the peers a connection learns from global-connect events, and the choice of an
IPSC to start a flow on. An IPSC that was seen and has left is told apart from one never seen, so a
caller can say "gone" rather than "unknown"."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from sbusr.smartbus import codec
from sbusr.smartbus.codec import GlobalConnect
from sbusr.smartbus.interface import BusError


class IpscUnavailable(BusError):
    """No IPSC on the bus matches the requested unit/process."""

    def __init__(self, message: str, known: bool) -> None:
        super().__init__(message)
        #: True when a matching IPSC was seen but has since left the bus
        self.known = known


@dataclass(frozen=True, slots=True)
class Peer:
    unit: int
    client: int
    type: int
    access_point: int
    add_info: str

    @property
    def is_ipsc(self) -> bool:
        return self.type == codec.CLIENT_TYPE_IPSC and self.unit in codec.IPSC_UNITS

    def as_dict(self) -> dict[str, object]:
        return {"unit": self.unit, "client": self.client, "type": self.type,
                "access_point": self.access_point, "add_info": self.add_info}


class PeerTable:
    """The peers present now (from global-connect events) and every IPSC ever seen; thread-safe."""

    def __init__(self) -> None:
        self._peers: dict[tuple[int, int], Peer] = {}
        self._seen_ipsc: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def update(self, event: GlobalConnect) -> int:
        """Apply one global-connect event; the number of IPSCs present afterwards."""
        key = (event.unit, event.client)
        with self._lock:
            if event.status == codec.GC_DISCONNECTED:
                self._peers.pop(key, None)
            else:
                peer = Peer(event.unit, event.client, event.type, event.access_point, event.add_info)
                self._peers[key] = peer
                if peer.is_ipsc:
                    self._seen_ipsc.add(key)
            return sum(1 for p in self._peers.values() if p.is_ipsc)

    def clear(self) -> None:
        """The link is lost: nobody is known to be present (the IPSCs seen stay seen)."""
        with self._lock:
            self._peers.clear()

    def present(self) -> list[Peer]:
        with self._lock:
            return sorted(self._peers.values(), key=lambda p: (p.unit, p.client))

    def choose_ipsc(self, unit: int | None = None, client: int | None = None) -> Peer:
        """A random IPSC on the bus matching whichever of unit/client is given."""
        with self._lock:
            candidates = [p for p in self._peers.values() if p.is_ipsc
                          and (unit is None or p.unit == unit) and (client is None or p.client == client)]
            seen = any((unit is None or u == unit) and (client is None or c == client)
                       for u, c in self._seen_ipsc)
        if not candidates:
            wanted = f"unit {'any' if unit is None else unit}, process {'any' if client is None else client}"
            raise IpscUnavailable(f"no IPSC on the bus for {wanted}", known=seen)
        return random.choice(candidates)
