"""Echo-client process for ``sbusr-bench``: sends every user-data packet straight back.

It is the "no RPC processing" end of the raw round trip that the RPC figures are
divided by.  It uses the same client kind as the server under test (the native thread
facade, or the vendor library) so that the ratio isolates what the RPC layers cost.
Prints ``ready`` on stdout once registered; SIGTERM/SIGINT or stdin EOF stop it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from sbusr.smartbus import codec
from sbusr.smartbus.codec import Packet
from sbusr.smartbus.interface import BusClient, BusError, ClientConfig, ClientHandlers

LOG = logging.getLogger("sbusr.bench.echo")


def make_client(kind: str, config: ClientConfig, handlers: ClientHandlers) -> BusClient:
    if kind == "vendor":
        from sbusr.smartbus.vendor.client import VendorClient

        return VendorClient(config, handlers)
    from sbusr.smartbus.native.threaded import ThreadedClient

    return ThreadedClient(config, handlers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sbusr-bench-echo")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--unit", type=int, default=20)
    p.add_argument("--client", type=int, default=1)
    p.add_argument("--kind", choices=["native", "vendor"], default="native")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    client: BusClient | None = None

    def on_packet(pkt: Packet) -> None:
        h = pkt.header
        if h.cmdtype in (codec.CMDTYPE_INTERNAL, codec.CMDTYPE_SYSTEM) or client is None:
            return
        try:
            client.send_data(h.src, h.cmd, h.cmdtype, pkt.body)
        except BusError as exc:
            LOG.debug("echo to %s failed: %s", h.src, exc)

    config = ClientConfig(host=args.host, port=args.port, unit_id=args.unit, client_id=args.client,
                          add_info="sbusr-bench-echo")
    client = make_client(args.kind, config, ClientHandlers(on_packet=on_packet))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    def stop_at_end_of_input() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=stop_at_end_of_input, daemon=True).start()
    client.start()
    try:
        if not client.wait_connected(15.0):
            LOG.error("echo client did not register on %s:%d", args.host, args.port)
            return 1
        print("ready", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        client.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
