"""``sbusr-ipsc``: an IPSC stand-in for a machine with no IPSC.

``sbusr-ipsc call METHOD [PARAM ...]`` calls an sbusr method exactly as a flow does: it registers as
an IPSC-type client (node unit 0-15, type 2), sends the JSON-RPC request the way
``smartbusSendData(unit, client, -1, 1, 211, json)`` does, waits for the NOTIFY titled with the
request id and prints the JSON-RPC response.  Exit status: 0 result, 1 error response, 2 no answer.

``sbusr-ipsc serve`` stays on the bus as an IPSC that acknowledges every remote flow start (ack 1)
and returns the flow's parameters as its result, so ``POST /api/flow`` can be tried end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from sbusr.smartbus import codec, flow_messages
from sbusr.smartbus.codec import Address, Packet
from sbusr.smartbus.interface import BusError, ClientConfig, ClientHandlers
from sbusr.smartbus.native.threaded import ThreadedClient


def _param(text: str) -> Any:
    """A command-line parameter: JSON when it parses (1, true, [..]), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sbusr-ipsc", description="An IPSC stand-in on SmartBus: call "
                                     "sbusr methods as a flow does, or acknowledge flow starts.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1", help="SmartBus host (default %(default)s)")
    common.add_argument("--port", type=int, default=8089, help="SmartBus port (default %(default)s)")
    common.add_argument("--unit", type=int, default=0, choices=range(0, 16), metavar="0-15",
                        help="this stand-in's IPSC unit id (default %(default)s)")
    common.add_argument("--process", type=int, default=None,
                        help="this stand-in's process index = client id (default: derived from the pid)")
    common.add_argument("--user", default="", help="user name, for a bus that requires a login")
    common.add_argument("--password", default="", help="password for --user")
    sub = parser.add_subparsers(dest="command", required=True)

    call = sub.add_parser("call", parents=[common], help="call a method as a flow does")
    call.add_argument("--server-unit", type=int, default=19, help="sbusr-server unit id (default 19)")
    call.add_argument("--server-client", type=int, default=1, help="sbusr-server client id (default 1)")
    call.add_argument("--id", default=None, help="request id (default: a fresh one)")
    call.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    call.add_argument("--notification", action="store_true", help="send without id; expect no reply")
    call.add_argument("--json", dest="named", metavar="OBJECT", default=None,
                      help="named params as a JSON object instead of positional PARAMs")
    call.add_argument("--raw", action="store_true", help="METHOD is a raw request body to send as is")
    call.add_argument("method", metavar="METHOD", help="JSON-RPC method, e.g. echo or weather.sk")
    call.add_argument("params", metavar="PARAM", nargs="*", help="positional params (JSON or text)")

    serve = sub.add_parser("serve", parents=[common], help="acknowledge remote flow starts")
    serve.add_argument("--reject", type=int, default=None, metavar="CODE",
                       help="answer every flow start with this error ack instead of 1")
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


def _client(args: argparse.Namespace, on_packet: Any) -> ThreadedClient:
    process = args.process if args.process is not None else 32 + os.getpid() % 96
    config = ClientConfig(host=args.host, port=args.port, unit_id=args.unit, client_id=process,
                          client_type=codec.CLIENT_TYPE_IPSC, add_info="sbusr-ipsc",
                          user=args.user, password=args.password)
    return ThreadedClient(config, ClientHandlers(on_packet=on_packet))


def call(args: argparse.Namespace) -> int:
    body, request_id = build_request(args)
    notifies: queue.Queue[codec.Notify] = queue.Queue()

    def on_packet(packet: Packet) -> None:
        if packet.cmdtype == codec.CMDTYPE_SYSTEM and packet.cmd == codec.CMD_NOTIFY:
            try:
                notifies.put(codec.decode_notify(packet.body))
            except codec.CodecError as exc:
                print(f"sbusr-ipsc: bad NOTIFY ignored: {exc}", file=sys.stderr)

    client = _client(args, on_packet)
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


def serve(args: argparse.Namespace) -> int:
    client: ThreadedClient

    def on_packet(packet: Packet) -> None:
        if packet.cmdtype != codec.CMDTYPE_SYSTEM or packet.cmd != codec.CMD_CALL_FLOW:
            return
        try:
            flow = flow_messages.decode_call_flow(packet.body)
        except codec.CodecError as exc:
            print(f"sbusr-ipsc: bad CALL_FLOW ignored: {exc}", file=sys.stderr)
            return
        ack = codec.FLOW_ACK_OK if args.reject is None else args.reject
        message = b"started" if args.reject is None else b"rejected by sbusr-ipsc serve --reject"
        params = flow.params.decode(errors="replace")
        print(f"flow {flow.project}/{flow.flow} from {packet.src} params {params} -> ack {ack}", flush=True)
        try:
            client.send_flow_ack(packet.src, flow.project, flow.invoke_id, ack, message)
            if ack == codec.FLOW_ACK_OK and flow.mode == 0:
                client.send_flow_result(packet.src, flow.project, flow.invoke_id, flow.params or b"[]")
        except BusError as exc:
            print(f"sbusr-ipsc: could not answer: {exc}", file=sys.stderr)

    client = _client(args, on_packet)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    client.start()
    if client.wait_connected(10.0):
        print(f"IPSC stand-in {client.config.unit_id}/{client.config.client_id} on "
              f"{args.host}:{args.port}, acknowledging flows", flush=True)
    else:
        print(f"sbusr-ipsc: not registered on {args.host}:{args.port} yet; retrying", file=sys.stderr)
    while not stop.wait(0.5):
        pass
    client.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.user) != bool(args.password):
        parser.error("--user and --password go together")
    return call(args) if args.command == "call" else serve(args)


if __name__ == "__main__":
    sys.exit(main())
