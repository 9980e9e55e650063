"""Host one vendor SmartBus client (libbusnetcli.so) in this process, driven by JSON lines.

Why a subprocess: the library allows one unit id per process and has process-wide
callbacks, so every vendor client in a test lives in its own agent.

    python tests/vendor_agent.py --host H --port P --unit U --client C --type T
        [--user U --password P --add-info I] [--backend]

stdin: one JSON command per line, each with an optional "seq" echoed in its result:
  {"op": "send_data", "cmd", "cmdtype", "unit", "client", "type", "hex" | "text"}
  {"op": "send_notify", "unit", "client", "project", "title", "mode", "expires", "param"}
  {"op": "ping", "unit", "client", "type", "hex" | "text"}
  {"op": "invoke_flow", "unit", "client", "project", "flow", "mode", "timeout_ms", "params"}
  {"op": "quit"}
stdout: JSON lines only (the library's own output is moved to stderr at fd level):
  connection / disconnect / recvdata / global_connect / flow_ack / flow_ret events,
  {"event": "result", "op", "seq", "rc"} or {"event": "result", ..., "error", "code"}.
Text is GBK.  With --backend the same commands go through sbusr's VendorClient
(invoke_flow then takes "ack_timeout"/"result_timeout" in seconds and "want_result").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sbusr.smartbus.codec import Address, GlobalConnect, Header, Packet
from sbusr.smartbus.interface import BusError, ClientConfig, ClientHandlers, FlowInvocation
from sbusr.smartbus.vendor import binding
from sbusr.smartbus.vendor.client import VendorClient

ENC = "gbk"


def _head(header: Header | None) -> dict[str, Any]:
    if header is None:
        return {"head": None}
    return {"cmd": header.cmd, "cmdtype": header.cmdtype,
            "src_unit": header.src.unit, "src_client": header.src.client, "src_type": header.src.type,
            "dst_unit": header.dst.unit, "dst_client": header.dst.client, "dst_type": header.dst.type,
            "packet_size": header.packet_size, "datalen": header.datalen}


def _text(raw: bytes) -> str:
    return binding.c_text(raw, ENC)


def _data(cmd: dict[str, Any]) -> bytes:
    if "hex" in cmd:
        return bytes.fromhex(cmd["hex"])
    return str(cmd.get("text", "")).encode(ENC)


class Output:
    """Serialised JSON-lines writer on a private dup of the original stdout."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def raw_event(event: binding.VendorEvent) -> dict[str, Any]:
    """A library callback as a JSON record."""
    if isinstance(event, binding.ConnectionEvent):
        return {"event": "connection", "client": event.local_client, "ap": event.access_point,
                "ack": event.ack}
    if isinstance(event, binding.DisconnectEvent):
        return {"event": "disconnect", "client": event.local_client}
    if isinstance(event, binding.DataEvent):
        pkt = event.packet
        return {"event": "recvdata", "client": event.local_client, **_head(pkt.header),
                "size": len(pkt.body), "data": pkt.body.hex()}
    if isinstance(event, binding.GlobalConnectEvent):
        return {"event": "global_connect", "unit": event.unit, "client": event.client, "type": event.type,
                "ap": event.access_point, "status": event.status, "add_info": _text(event.add_info)}
    assert isinstance(event, binding.FlowReplyEvent)
    code_name = "ack" if event.kind == "ack" else "ret"
    text_name = "msg" if event.kind == "ack" else "param"
    return {"event": f"flow_{event.kind}", "client": event.local_client, "project": _text(event.project),
            "invoke_id": event.invoke_id, code_name: event.code, text_name: _text(event.text),
            **_head(event.header)}


class RawAgent:
    """Drives VendorLibrary directly: every callback becomes one event line."""

    def __init__(self, args: argparse.Namespace, out: Output) -> None:
        self.args = args
        self.out = out
        self.events: queue.SimpleQueue[binding.VendorEvent | None] = queue.SimpleQueue()
        self.lib = binding.VendorLibrary.load()
        self._writer = threading.Thread(target=self._drain, name="agent-writer", daemon=True)

    def _drain(self) -> None:
        while (event := self.events.get()) is not None:
            self.out.write(raw_event(event))

    def start(self) -> int:
        a = self.args
        self._writer.start()
        self.lib.init(a.unit)
        self.lib.subscribe(a.client, self.events.put)
        return self.lib.create_connect(a.client, a.type, a.host.encode(), a.port, b"", binding.NO_SLAVE_PORT,
                                       a.user.encode(ENC), a.password.encode(ENC), a.add_info.encode(ENC))

    def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op, c, lib = cmd["op"], self.args.client, self.lib
        if op == "send_data":
            dst = Address(cmd["unit"], cmd["client"], cmd["type"])
            return {"rc": lib.send_data(c, cmd["cmd"], cmd["cmdtype"], dst, _data(cmd))}
        if op == "ping":
            return {"rc": lib.send_ping(c, Address(cmd["unit"], cmd["client"], cmd["type"]), _data(cmd))}
        if op == "send_notify":
            return {"rc": lib.send_notify(c, cmd["unit"], cmd["client"], cmd["project"].encode(ENC),
                                          cmd["title"].encode(ENC), cmd.get("mode", 0),
                                          cmd.get("expires", 0), cmd["param"].encode(ENC))}
        if op == "invoke_flow":
            return {"rc": lib.invoke_flow(c, cmd["unit"], cmd["client"], cmd["project"].encode(ENC),
                                          cmd["flow"].encode(ENC), cmd.get("mode", 0),
                                          cmd.get("timeout_ms", 10000), cmd.get("params", "[]").encode(ENC))}
        raise ValueError(f"unknown op {op!r}")

    def close(self) -> None:
        self.lib.unsubscribe(self.args.client)
        self.events.put(None)
        self._writer.join(5)


class BackendAgent:
    """Drives sbusr's VendorClient: handler calls and flow futures become event lines."""

    def __init__(self, args: argparse.Namespace, out: Output) -> None:
        self.args = args
        self.out = out
        handlers = ClientHandlers(
            on_connect=lambda ap: out.write({"event": "connection", "client": args.client, "ap": ap,
                                             "ack": 0}),
            on_connect_failed=lambda code: out.write({"event": "connection", "client": args.client,
                                                      "ap": None, "ack": code}),
            on_disconnect=lambda: out.write({"event": "disconnect", "client": args.client}),
            on_packet=self._on_packet,
            on_global_connect=self._on_global_connect,
        )
        config = ClientConfig(host=args.host, port=args.port, unit_id=args.unit, client_id=args.client,
                              client_type=args.type, user=args.user, password=args.password,
                              add_info=args.add_info, encoding=ENC)
        self.client = VendorClient(config, handlers)

    def _on_packet(self, pkt: Packet) -> None:
        self.out.write({"event": "recvdata", "client": self.args.client, **_head(pkt.header),
                        "size": len(pkt.body), "data": pkt.body.hex()})

    def _on_global_connect(self, gc: GlobalConnect) -> None:
        self.out.write({"event": "global_connect", "unit": gc.unit, "client": gc.client, "type": gc.type,
                        "ap": gc.access_point, "status": gc.status, "add_info": gc.add_info})

    def start(self) -> int:
        self.client.start()
        return 0

    def _watch(self, inv: FlowInvocation) -> None:
        def ack_done(fut: Any) -> None:
            exc = fut.exception()
            if exc is not None:
                rec = {"ack": getattr(exc, "code", None), "msg": "", "error": type(exc).__name__}
            else:
                ev = fut.result()
                src = ev.source
                rec = {"ack": ev.ack, "msg": ev.message,
                       "src": None if src is None else [src.unit, src.client, src.type]}
            self.out.write({"event": "flow_ack", "invoke_id": inv.invoke_id, **rec})

        def ret_done(fut: Any) -> None:
            exc = fut.exception()
            rec = ({"ret": getattr(exc, "code", None), "param": "", "error": type(exc).__name__}
                   if exc is not None else {"ret": 1, "param": fut.result()})
            self.out.write({"event": "flow_ret", "invoke_id": inv.invoke_id, **rec})

        inv.ack.add_done_callback(ack_done)
        if inv.result is not None:
            inv.result.add_done_callback(ret_done)

    def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op, cl = cmd["op"], self.client
        if op == "send_data":
            cl.send_data(Address(cmd["unit"], cmd["client"], cmd["type"]), cmd["cmd"], cmd["cmdtype"],
                         _data(cmd))
            return {"rc": 0}
        if op == "ping":
            cl.ping(Address(cmd["unit"], cmd["client"], cmd["type"]), _data(cmd))
            return {"rc": 0}
        if op == "send_notify":
            return {"rc": cl.send_notify(cmd["unit"], cmd["client"], cmd["project"], cmd["title"],
                                         cmd["param"].encode(ENC), cmd.get("expires", 0), cmd.get("mode", 0),
                                         cmd.get("client_type", 2))}
        if op == "invoke_flow":
            inv = cl.invoke_flow(cmd["unit"], cmd["client"], cmd["project"], cmd["flow"],
                                 cmd.get("params", "[]").encode(ENC),
                                 want_result=cmd.get("want_result", True),
                                 ack_timeout=cmd.get("ack_timeout", 5.0),
                                 result_timeout=cmd.get("result_timeout"))
            self._watch(inv)
            return {"rc": inv.invoke_id}
        if op == "state":
            return {"rc": 0, "connected": cl.connected, "ap": cl.access_point}
        raise ValueError(f"unknown op {op!r}")

    def close(self) -> None:
        self.client.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--unit", type=int, required=True)
    p.add_argument("--client", type=int, default=0)
    p.add_argument("--type", type=int, default=19)
    p.add_argument("--user", default="")
    p.add_argument("--password", default="")
    p.add_argument("--add-info", default="")
    p.add_argument("--backend", action="store_true", help="go through sbusr's VendorClient")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Keep stdout for JSON: the library (C stdio) and anything else writes to stderr.
    sys.stdout.flush()
    out = Output(os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1))
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    agent: RawAgent | BackendAgent = BackendAgent(args, out) if args.backend else RawAgent(args, out)
    try:
        rc = agent.start()
    except BusError as exc:
        out.write({"event": "started", "rc": exc.code, "error": str(exc)})
        return 2
    out.write({"event": "started", "rc": rc, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
        except ValueError as exc:
            out.write({"event": "result", "op": None, "error": f"bad JSON: {exc}"})
            continue
        base = {"event": "result", "op": cmd.get("op"), "seq": cmd.get("seq")}
        if cmd.get("op") == "quit":
            out.write({**base, "rc": 0})
            break
        try:
            out.write({**base, **agent.run(cmd)})
        except BusError as exc:
            out.write({**base, "rc": exc.code, "error": f"{type(exc).__name__}: {exc}", "code": exc.code})
        except (KeyError, TypeError, ValueError) as exc:
            out.write({**base, "rc": None, "error": f"{type(exc).__name__}: {exc}"})
    agent.close()
    # The library's threads keep running and may call back during interpreter
    # teardown; leave without it.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
