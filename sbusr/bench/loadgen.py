"""Load-generator process for ``sbusr-bench``: one IPSC-role native client, many virtual callers.

Run as ``python -m sbusr.bench.loadgen --port P --unit U``.  The parent sends one JSON
command per stdin line and reads one JSON answer per stdout line, so a process is
started once and reused by every phase.  Everything time-critical runs on this
process's event loop, on the client's own packet callback: a reply is matched and the
caller's next request written without a thread hop, so the generator costs as little
CPU as possible on a small machine that also runs the server.

Commands: ``probe`` (wait until the target answers), ``run`` (one measured phase),
``quit``.  Latencies are ``perf_counter`` differences, reported in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address, Packet
from sbusr.smartbus.interface import ClientConfig, ClientHandlers, NotConnected
from sbusr.smartbus.native.client import SmartBusClient

LOG = logging.getLogger("sbusr.bench.loadgen")

#: user-data cmdtype of raw round trips (anything but 0, 1 and the RPC cmdtype 211)
CMDTYPE_RAW = 212
_perf = time.perf_counter
_NOTIFY_TITLE = slice(42, 144)  # char title[102] inside the NOTIFY body (see codec._NOTIFY_FIXED)
_NOTIFY_PARAM = 148


def _error_code(body: bytes) -> str:
    """The JSON-RPC error code of an error reply, as text ("-32002"); "?" when it cannot be read."""
    at = body.find(b'"code":')
    if at < 0:
        return "?"
    end = at + 7
    while end < len(body) and body[end:end + 1] in b"-0123456789":
        end += 1
    return body[at + 7:end].decode("ascii") or "?"


def _reply_id(pkt: Packet) -> tuple[int, bool] | None:
    """(request id, is_error) of a reply packet, or None when it is not one of ours."""
    h = pkt.header
    body = pkt.body
    try:
        if h.cmdtype == CMDTYPE_RAW:  # our own bytes back: ... "id":N}
            return int(body[body.rindex(b":") + 1:-1]), False
        if h.cmdtype == codec.CMDTYPE_SYSTEM and h.cmd == codec.CMD_NOTIFY and len(body) >= _NOTIFY_PARAM:
            title = body[_NOTIFY_TITLE]
            return int(title[:title.index(b"\0")]), b'"error"' in body[_NOTIFY_PARAM:]
    except ValueError:
        return None
    return None


class Phase:
    """Bookkeeping of one measured phase (all on the loop thread)."""

    def __init__(self, spec: dict[str, Any], start: float) -> None:
        self.template: bytes = spec["body"].encode("utf-8")
        self.dst = Address(int(spec["target"][0]), int(spec["target"][1]), -1)
        self.cmdtype = codec.CMDTYPE_RPC if spec["kind"] == "rpc" else CMDTYPE_RAW
        self.callers = int(spec.get("callers") or 0)
        self.rate = float(spec.get("rate") or 0.0)
        self.start = start
        self.window_start = start + float(spec["warmup"])
        self.window_end = self.window_start + float(spec["duration"])
        self.inflight: dict[int, float] = {}
        self.lat_us: list[int] = []
        self.ok = self.errors = self.send_errors = self.late = self.early = self.sent = 0
        self.error_codes: dict[str, int] = {}  # why the error replies came (busy, timeout ...)
        # the open loop's schedule still has slots to send: a tick that a busy loop runs after the
        # window still sends the slots due before its end, so an empty ``inflight`` is not yet the end
        self.scheduled = self.rate > 0
        self.done: asyncio.Future[None] | None = None

    def finish_if_drained(self, now: float) -> None:
        """Resolve ``done`` once no request can be sent any more and every one sent is answered."""
        if now < self.window_end or self.scheduled or self.inflight:
            return
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


class LoadGen:
    """The client plus the currently running phase."""

    def __init__(self, config: ClientConfig) -> None:
        self.client = SmartBusClient(config, ClientHandlers(on_packet=self._on_packet))
        self.phase: Phase | None = None
        self.next_id = 1
        self.probe_waiting: dict[int, asyncio.Future[None]] = {}

    # ------------------------------------------------------------------ sending
    def _send(self, phase: Phase) -> None:
        rid = self.next_id
        self.next_id += 1
        raw = self.client.build_data(phase.dst, 1, phase.cmdtype, phase.template % rid)
        try:
            self.client.write(raw)
        except NotConnected:
            phase.send_errors += 1
            return
        phase.inflight[rid] = _perf()
        phase.sent += 1

    # ------------------------------------------------------------------ receiving (loop thread)
    def _on_packet(self, pkt: Packet) -> None:
        now = _perf()
        parsed = _reply_id(pkt)
        if parsed is None:
            return
        rid, is_error = parsed
        fut = self.probe_waiting.pop(rid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(None)
            return
        phase = self.phase
        if phase is None:
            return
        sent = phase.inflight.pop(rid, None)
        if sent is None:
            return  # a reply from an earlier phase, answered after its drain deadline
        if phase.window_start <= now <= phase.window_end:
            if is_error:
                phase.errors += 1
                code = _error_code(pkt.body)
                phase.error_codes[code] = phase.error_codes.get(code, 0) + 1
            else:
                phase.ok += 1
                phase.lat_us.append(int((now - sent) * 1e6))
        elif now > phase.window_end:
            phase.late += 1
        else:
            phase.early += 1  # answered during the warm-up: not measured, but accounted for
        if now < phase.window_end and not phase.rate:
            self._send(phase)  # closed loop: this caller's next request
        phase.finish_if_drained(now)

    # ------------------------------------------------------------------ commands
    async def probe(self, spec: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = _perf() + float(spec.get("timeout", 30.0))
        template = spec["body"].encode("utf-8")
        cmdtype = codec.CMDTYPE_RPC if spec["kind"] == "rpc" else CMDTYPE_RAW
        dst = Address(int(spec["target"][0]), int(spec["target"][1]), -1)
        began = _perf()
        while _perf() < deadline:
            if await self.client.wait_connected(max(0.1, deadline - _perf())):
                rid = self.next_id
                self.next_id += 1
                fut: asyncio.Future[None] = loop.create_future()
                self.probe_waiting[rid] = fut
                try:
                    self.client.write(self.client.build_data(dst, 1, cmdtype, template % rid))
                    await asyncio.wait_for(fut, 0.5)
                    return {"ok": True, "after": round(_perf() - began, 3)}
                except (TimeoutError, NotConnected):
                    pass
                finally:
                    self.probe_waiting.pop(rid, None)
            await asyncio.sleep(0.1)
        return {"ok": False, "after": round(_perf() - began, 3)}

    async def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if not await self.client.wait_connected(10.0):
            return {"error": "load client not registered on the bus"}
        start = _perf() + max(0.0, float(spec["start_at"]) - time.time())
        phase = Phase(spec, start)
        phase.done = loop.create_future()
        self.phase = phase
        await asyncio.sleep(max(0.0, start - _perf()))
        if phase.rate:
            self._tick(phase, loop, phase.start)
        else:
            for _ in range(phase.callers):
                self._send(phase)
        while _perf() < phase.window_end:  # a timer may fire a hair early
            await asyncio.sleep(phase.window_end - _perf())
        phase.finish_if_drained(_perf())
        if not phase.done.done():
            try:
                await asyncio.wait_for(asyncio.shield(phase.done), float(spec.get("drain", 5.0)))
            except TimeoutError:
                pass
        self.phase = None
        return {"ok": phase.ok, "errors": phase.errors, "lost": len(phase.inflight),
                "send_errors": phase.send_errors, "late": phase.late, "early": phase.early,
                "sent": phase.sent, "error_codes": phase.error_codes, "lat_us": phase.lat_us}

    def _tick(self, phase: Phase, loop: asyncio.AbstractEventLoop, due: float) -> None:
        """Open loop: send everything whose slot has come, then sleep until the next slot."""
        if self.phase is not phase:
            return
        now = _perf()
        interval = 1.0 / phase.rate
        while due <= now and due < phase.window_end:
            self._send(phase)
            due += interval
        if due < phase.window_end:
            loop.call_later(due - now, self._tick, phase, loop, due)
        else:
            phase.scheduled = False
            phase.finish_if_drained(now)


async def _serve(gen: LoadGen) -> None:
    loop = asyncio.get_running_loop()
    await gen.client.start()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return  # the parent went away
            try:
                spec = json.loads(line)
                op = spec["op"]
                if op == "quit":
                    return
                if op == "probe":
                    answer = await gen.probe(spec)
                elif op == "run":
                    answer = await gen.run(spec)
                else:
                    answer = {"error": f"unknown op {op!r}"}
            except (ValueError, KeyError, TypeError) as exc:
                answer = {"error": f"bad command: {exc}"}
            sys.stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
            sys.stdout.flush()
    finally:
        await gen.client.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sbusr-bench-loadgen")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--unit", type=int, required=True, help="IPSC node unit 0..15")
    p.add_argument("--client", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ClientConfig(host=args.host, port=args.port, unit_id=args.unit, client_id=args.client,
                          client_type=codec.CLIENT_TYPE_IPSC, add_info=f"sbusr-bench-load-{args.unit}")
    try:
        asyncio.run(_serve(LoadGen(config)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
