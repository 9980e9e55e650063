"""An IPSC-role client that keeps sending JSON-RPC requests and counts every reply.

It also tracks whether the target server is on the bus (global-connect events), and stamps each
request with what it knew when sending: a request sent after the client saw the server join must
be answered exactly once.
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
from typing import Any

from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, GlobalConnect, Packet
from sbusr.smartbus.interface import BusError, ClientConfig, ClientHandlers
from sbusr.smartbus.native.threaded import ThreadedClient

START_TIMEOUT = 15.0


class LoadCaller:
    """Sends ``method(params)`` to ``target`` every ``interval`` seconds from its own thread."""

    def __init__(self, host: str, port: int, target: tuple[int, int], *, unit: int = 0, process: int = 9,
                 method: str = "echo", params: list[Any] | None = None, interval: float = 0.01,
                 prefix: str = "load") -> None:
        self.target = target
        self.method = method
        self.params = params if params is not None else ["x"]
        self.interval = interval
        self.prefix = prefix
        self.present = False  # the target is registered, as far as this client has been told
        self.joined = threading.Event()
        self.left = threading.Event()
        self.sent: list[tuple[str, bool]] = []  # (request id, target present when sent)
        self.replies: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        config = ClientConfig(host=host, port=port, unit_id=unit, client_id=process,
                              client_type=codec.CLIENT_TYPE_IPSC, add_info=f"load-{unit}-{process}")
        self.client = ThreadedClient(config, ClientHandlers(on_packet=self._on_packet,
                                                            on_global_connect=self._on_global_connect))

    def start(self) -> LoadCaller:
        self.client.start()
        if not self.client.wait_connected(START_TIMEOUT):
            self.client.stop()
            raise RuntimeError("load caller did not register")
        self._thread = threading.Thread(target=self._send_loop, name=f"{self.prefix}-sender", daemon=True)
        self._thread.start()
        return self

    def stop_sending(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def stop(self) -> None:
        self.stop_sending()
        self.client.stop()

    def __enter__(self) -> LoadCaller:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ counting
    def snapshot(self) -> tuple[list[tuple[str, bool]], dict[str, list[dict[str, Any]]]]:
        with self._lock:
            return list(self.sent), {k: list(v) for k, v in self.replies.items()}

    def unanswered(self, ids: list[str]) -> list[str]:
        with self._lock:
            return [rid for rid in ids if not self.replies.get(rid)]

    def count_replies(self, predicate: Any) -> int:
        with self._lock:
            return sum(1 for replies in self.replies.values() for r in replies if predicate(r))

    # ------------------------------------------------------------------ threads
    def _send_loop(self) -> None:
        dst = Address(self.target[0], self.target[1], -1)
        while not self._stop.wait(self.interval):
            rid = f"{self.prefix}-{next(self._ids)}"
            body = json.dumps({"jsonrpc": "2.0", "id": rid, "method": self.method,
                               "params": self.params}).encode()
            with self._lock:
                self.sent.append((rid, self.present))
            try:
                self.client.send_data(dst, 1, codec.CMDTYPE_RPC, body)
            except BusError:
                with self._lock:
                    self.sent.pop()

    def _on_packet(self, packet: Packet) -> None:
        if packet.cmdtype != codec.CMDTYPE_SYSTEM or packet.cmd != codec.CMD_NOTIFY:
            return
        notify = codec.decode_notify(packet.body, self.client.config.encoding)
        reply = json.loads(notify.param.decode("utf-8", errors="replace"))
        with self._lock:
            self.replies[notify.title].append(reply)

    def _on_global_connect(self, event: GlobalConnect) -> None:
        if (event.unit, event.client) != self.target:
            return
        with self._lock:
            self.present = event.status != codec.GC_DISCONNECTED
        (self.joined if self.present else self.left).set()
