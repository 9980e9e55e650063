"""``sbusr-ipsc``: call an sbusr method exactly as an IPSC flow does, from a shell.

It registers as an IPSC-type client (node unit 0-15, type 2), sends the
JSON-RPC request with ``smartbusSendData(unit, client, -1, 1, 211, json)``
semantics, waits for the NOTIFY whose title is the request id and prints the
JSON-RPC response.  Exit status: 0 result, 1 error response, 2 no answer.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, Packet
from sbusr.smartbus.interface import BusError, ClientConfig, ClientHandlers
from sbusr.smartbus.threaded import ThreadedClient


def _param(text: str) -> Any:
    """A command-line parameter: JSON when it parses (1, true, [..]), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sbusr-ipsc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="SmartBus host (default %(default)s)")
    parser.add_argument("--port", type=int, default=8089, help="SmartBus port (default %(default)s)")
    parser.add_argument("--unit", type=int, default=0, choices=range(0, 16), metavar="0-15",
                        help="this stand-in's IPSC unit id (default %(default)s)")
    parser.add_argument("--process", type=int, default=None,
                        help="this stand-in's process index = client id (default: derived from the pid)")
    parser.add_argument("--server-unit", type=int, default=19, help="sbusr-server unit id (default 19)")
    parser.add_argument("--server-client", type=int, default=1, help="sbusr-server client id (default 1)")
    parser.add_argument("--id", default=None, help="request id (default: a fresh one)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    parser.add_argument("--notification", action="store_true", help="send without id; expect no reply")
    parser.add_argument("--json", dest="named", metavar="OBJECT", default=None,
                        help="named params as a JSON object instead of positional PARAMs")
    parser.add_argument("--raw", action="store_true", help="METHOD is a raw request body to send as is")
    parser.add_argument("method", metavar="METHOD", help="JSON-RPC method, e.g. echo or weather.sk")
    parser.add_argument("params", metavar="PARAM", nargs="*", help="positional params (JSON or text)")
    return parser


def build_request(args: argparse.Namespace) -> tuple[bytes, str | None]:
    if args.raw:
        return args.method.encode("utf-8"), args.id
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": args.method}
    if args.named is not None:
        named = json.loads(args.named)
        if not isinstance(named, dict):
            raise SystemExit("--json needs a JSON object")
        request["params"] = named
    else:
        request["params"] = [_param(p) for p in args.params]
    request_id = None
    if not args.notification:
        request_id = args.id or uuid.uuid4().hex[:16]
        request["id"] = request_id
    return json.dumps(request, ensure_ascii=False).encode("utf-8"), request_id


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    body, request_id = build_request(args)
    process = args.process if args.process is not None else 32 + os.getpid() % 96
    notifies: queue.Queue[codec.Notify] = queue.Queue()

    def on_packet(packet: Packet) -> None:
        if packet.cmdtype == codec.CMDTYPE_SYSTEM and packet.cmd == codec.CMD_NOTIFY:
            try:
                notifies.put(codec.decode_notify(packet.body))
            except codec.CodecError as exc:
                print(f"sbusr-ipsc: bad NOTIFY ignored: {exc}", file=sys.stderr)

    config = ClientConfig(host=args.host, port=args.port, unit_id=args.unit, client_id=process,
                          client_type=codec.CLIENT_TYPE_IPSC, add_info="sbusr-ipsc")
    client = ThreadedClient(config, ClientHandlers(on_packet=on_packet))
    client.start()
    try:
        if not client.wait_connected(args.timeout):
            print(f"sbusr-ipsc: could not register on {args.host}:{args.port}", file=sys.stderr)
            return 2
        client.send_data(Address(args.server_unit, args.server_client, -1), 1, codec.CMDTYPE_RPC, body)
        if request_id is None and not args.raw:
            return 0
        return _await_reply(notifies, request_id, args.timeout)
    except BusError as exc:
        print(f"sbusr-ipsc: {exc}", file=sys.stderr)
        return 2
    finally:
        client.stop()


def _await_reply(notifies: queue.Queue[codec.Notify], request_id: str | None, timeout: float) -> int:
    try:
        while True:
            notify = notifies.get(timeout=timeout)
            if request_id is None or notify.title == str(request_id):
                break
    except queue.Empty:
        print(f"sbusr-ipsc: no reply within {timeout:g} s", file=sys.stderr)
        return 2
    text = notify.param.decode("utf-8", errors="replace")
    print(text)
    try:
        response = json.loads(text)
    except ValueError:
        return 1
    return 1 if isinstance(response, dict) and "error" in response else 0


if __name__ == "__main__":
    sys.exit(main())
