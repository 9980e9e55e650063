"""``sbusr-bus``: run the development SmartBus in the foreground.

A standalone developer tool, so plain argparse and stdlib logging rather than oslo.config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from sbusr.smartbus import codec
from sbusr.smartbus.bus import Bus
from sbusr.smartbus.memory import DEFAULT_MEMORY_BUDGET
from sbusr.util import ready

LOG = logging.getLogger("sbusr.cmd.bus")


def _int_in(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be {lo}..{hi}, got {value}")
        return value
    return parse


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbusr-bus", description="Development SmartBus server.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=_int_in(0, 65535), default=8089,
                   help="TCP port, 0 = pick a free one (default %(default)s)")
    p.add_argument("--unit-id", type=_int_in(0, 15), default=0,
                   help="the bus's own unit id, the clients' access point (0-15, default %(default)s)")
    p.add_argument("--user", help="require this user name on REGISTER (with --password)")
    p.add_argument("--password", help="password for --user")
    p.add_argument("--max-packet-size", type=_int_in(codec.HEADER_SIZE, 2**31 - 1),
                   default=codec.DEFAULT_MAX_PACKET_SIZE,
                   help="largest accepted packet in bytes (default %(default)s)")
    p.add_argument("--max-write-buffer", type=_int_in(1, 2**62), default=64 * 1024 * 1024,
                   help="bytes queued for one client before it is dropped as a slow reader "
                        "(default %(default)s)")
    p.add_argument("--memory-budget", type=_int_in(1, 2**42), default=DEFAULT_MEMORY_BUDGET // 2**20,
                   metavar="MIB",
                   help="bound on this process's resident memory (RSS, what top shows) in MiB: connection "
                        "buffers (input being framed, output queued) get what the bus does not use at rest, "
                        "less room for the copies they cost, and packets get a third of that; when the "
                        "buffers or the resident set reach it, the connections buffering the most are "
                        "dropped first (default %(default)s)")
    p.add_argument("--idle-timeout", type=_float, default=30.0,
                   help="drop a connection silent for this many seconds, 0 = never (default %(default)s)")
    p.add_argument("--encoding", default=codec.DEFAULT_ENCODING,
                   help="text encoding of names on the wire (default %(default)s)")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                   help="default %(default)s")
    return p


async def _serve(bus: Bus) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await bus.start()
    print(f"listening on {bus.host}:{bus.port}", flush=True)
    ready.mark("listening", address=f"{bus.host}:{bus.port}")
    try:
        await stop.wait()
    finally:
        LOG.info("shutting down")
        await bus.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.user is None) != (args.password is None):
        build_parser().error("--user and --password go together")
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ready.setup("sbusr-bus", {"listening"})
    users = None if args.user is None else {args.user: args.password}
    try:
        bus = Bus(host=args.host, port=args.port, unit_id=args.unit_id, users=users,
                  max_packet_size=args.max_packet_size, max_write_buffer=args.max_write_buffer,
                  idle_timeout=args.idle_timeout, encoding=args.encoding,
                  memory_budget=args.memory_budget * 2**20, process_budget=args.memory_budget * 2**20)
    except (ValueError, LookupError) as exc:
        LOG.error("bad configuration: %s", exc)
        return 2
    try:
        asyncio.run(_serve(bus))
    except ValueError as exc:  # a memory budget the bus does not fit in
        LOG.error("bad configuration: %s", exc)
        return 2
    except OSError as exc:
        LOG.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
