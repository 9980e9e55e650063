"""``sbusr-bench``: RPC throughput and latency against the raw bus round trip, measured the same way.

One run starts a development bus, an ``sbusr-server``, an echo client and load-generator
processes (IPSC-role native clients), then for each concurrency measures three
closed-loop phases -- ``raw`` (data packet to the echo client and back, no RPC),
``null`` (JSON-RPC ``echo`` of a tiny string) and ``payload`` (``echo`` of a small
object) -- and finally an open-loop phase at a fraction of the highest sustained
``null`` rate, whose p99 is the latency a caller sees on a server that is not saturated.
Dividing RPC calls/s by raw round trips/s gives figures that compare across machines.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sbusr.bench import procs, stats
from sbusr.util.procs import cpu_seconds, descendants, rss_kb

#: --help text: plain words (the module docstring is reStructuredText)
DESCRIPTION = ("RPC throughput and latency of sbusr-server against the raw SmartBus round trip, measured "
               "the same way: a development bus, an sbusr-server, an echo client and load generators "
               "are started for the run.")
MAX_LOAD_PROCESSES = 15  # IPSC units 1..15 (unit 0 is the bus's own)


def _concurrency_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("concurrency values must be positive integers")
    return values


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbusr-bench", description=DESCRIPTION)
    p.add_argument("--duration", type=_positive(float), default=5.0,
                   help="measured seconds per phase (default %(default)s)")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds before each phase "
                   "(default %(default)s)")
    p.add_argument("--drain", type=_positive(float), default=5.0,
                   help="seconds to wait for the replies still due when a phase ends; later ones count "
                        "as lost (default %(default)s)")
    p.add_argument("--concurrency", type=_concurrency_list, default=[1, 8, 64],
                   help="requests kept in flight, comma-separated (default 1,8,64)")
    p.add_argument("--load-processes", type=_positive(int),
                   help=f"load-generator processes per phase (default min(4, concurrency), "
                        f"at most {MAX_LOAD_PROCESSES})")
    p.add_argument("--mode", choices=["thread", "process", "both"], default="both",
                   help="server [execution] mode; both = every phase against a thread-mode server, "
                        "then against a process-mode one, same bus and load (default %(default)s)")
    p.add_argument("--workers", type=_positive(int), help="server [execution] workers (default: its own)")
    p.add_argument("--client", choices=["native", "vendor"], default="native",
                   help="SmartBus client of the server and the echo client (default %(default)s)")
    p.add_argument("--payload-size", type=_positive(int), default=512,
                   help="approximate request size of the payload phase in bytes (default %(default)s)")
    p.add_argument("--open-loop-fraction", type=float, default=0.5,
                   help="open-loop rate as a fraction of the top sustained null rate; 0 skips it "
                        "(default %(default)s)")
    p.add_argument("--phases", default="raw,null,payload",
                   help="closed-loop phases to run, comma-separated (default %(default)s)")
    p.add_argument("--server-opt", action="append", default=[], metavar="SECTION.NAME=VALUE",
                   help="extra server config option, repeatable (e.g. execution.call_timeout=0)")
    p.add_argument("--server-prefix", default="",
                   help="command line put before the server's python, e.g. a profiler "
                        "('py-spy record -o out.svg --')")
    p.add_argument("--cost-calls", type=int, default=10000,
                   help="calls per step of the in-process CPU cost per layer, measured after the bus "
                        "phases with nothing else running; 0 skips it (default %(default)s)")
    p.add_argument("--json", metavar="FILE|-", help="also write the results as JSON ('-' = stdout; the "
                   "table then goes to stderr)")
    return p


def request_body(method: str, params: str) -> str:
    """A JSON-RPC request with a ``%d`` slot for the id, filled per call by the load generator."""
    return '{"jsonrpc":"2.0","method":"' + method + '","params":[' + params + '],"id":%d}'


def payload_params(size: int) -> str:
    """An IVR-like object whose request is about ``size`` bytes."""
    head = '{"caller":"13800138000","callee":"4008001234","ivr":"main-menu","digits":"1#","note":"'
    filler = max(0, size - len(request_body("echo", head + '"}')) - 4)
    return head + "x" * filler + '"}'


def vendor_problem() -> str | None:
    """Why ``--client vendor`` cannot run here, or None."""
    try:
        from sbusr.smartbus.vendor import binding
    except Exception as exc:  # an unfinished or broken binding must only fail this option
        return f"the vendor binding cannot be imported ({exc})"
    try:
        binding.find_library()
    except Exception as exc:
        return f"libbusnetcli.so not found ({exc})"
    return None


class Bench:
    """The processes of one run and the phases measured with them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[procs.Child] = []
        self.loads: list[procs.LoadProcess] = []
        self.server: procs.Child | None = None
        self.bus: procs.Child | None = None
        self.echo: procs.Child | None = None
        self.port = 0
        self.tmp = tempfile.TemporaryDirectory(prefix="sbusr-bench-")

    def start(self) -> None:
        a = self.args
        bus, port = procs.start_bus()
        self.bus = bus
        self.port = port
        self.children.append(bus)
        self.echo = procs.start_echo(port, a.client)
        self.children.append(self.echo)
        count = max(self.processes_for(c) for c in a.concurrency)
        for unit in range(1, count + 1):
            load = procs.LoadProcess(port, unit)
            self.loads.append(load)
            self.children.append(load)
        self._probe("raw", (procs.ECHO_UNIT, procs.ECHO_CLIENT))

    def start_server(self, mode: str) -> None:
        a = self.args
        config = procs.write_server_config(Path(self.tmp.name) / f"server-{mode}.conf", self.port, mode,
                                           a.workers, a.client, a.server_opt)
        self.server = procs.start_server(config, a.server_prefix.split() if a.server_prefix else None)
        self.children.insert(1, self.server)  # stopped after the loads, before the bus
        self._probe("rpc", (procs.SERVER_UNIT, procs.SERVER_CLIENT))

    def stop_server(self) -> None:
        if self.server is not None:
            self.children.remove(self.server)
            self.server.stop()
            self.server = None

    def _probe(self, kind: str, target: tuple[int, int]) -> None:
        for load in self.loads:  # every generator must reach the target before anything is measured
            load.send({"op": "probe", "kind": kind, "target": target, "timeout": 30.0,
                       "body": request_body("echo", '"probe"')})
            if not load.receive(40.0)["ok"]:
                raise RuntimeError(f"load generator {load.unit} got no {kind} answer within 30 s")

    def cpu_sample(self) -> dict[str, float]:
        """CPU seconds used so far by each role (process-mode workers summed, load generators too)."""
        def cpu(pids: list[int]) -> float:
            return sum(cpu_seconds(pid) or 0.0 for pid in pids)

        server = [self.server.pid] if self.server is not None else []
        return {"server": cpu(server), "workers": cpu(descendants(server[0]) if server else []),
                "bus": cpu([self.bus.pid] if self.bus else []),
                "echo": cpu([self.echo.pid] if self.echo else []),
                "load": cpu([load.pid for load in self.loads])}

    def stop(self) -> None:
        for child in reversed(self.children):  # all at once: on a busy machine one by one takes minutes
            child.begin_stop()
        for child in reversed(self.children):  # then wait, loads first, bus last
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others
                print(f"sbusr-bench: stopping {child.name} failed: {exc}", file=sys.stderr)
        self.children.clear()
        self.tmp.cleanup()

    def processes_for(self, concurrency: int) -> int:
        wanted = self.args.load_processes or 4
        return max(1, min(wanted, concurrency, MAX_LOAD_PROCESSES))

    def run_phase(self, kind: str, body: str, concurrency: int, rate: float = 0.0) -> dict[str, Any]:
        a = self.args
        loads = self.loads[:self.processes_for(concurrency)]
        target = (procs.SERVER_UNIT, procs.SERVER_CLIENT) if kind == "rpc" else \
            (procs.ECHO_UNIT, procs.ECHO_CLIENT)
        start_at = time.time() + 0.2
        samples: list[dict[str, float]] = []

        def sample_cpu() -> None:  # over the measured window only, like the load generators' counts
            for moment in (start_at + a.warmup, start_at + a.warmup + a.duration):
                time.sleep(max(0.0, moment - time.time()))
                samples.append(self.cpu_sample())

        sampler = threading.Thread(target=sample_cpu, name="cpu-sampler", daemon=True)
        sampler.start()
        for i, load in enumerate(loads):
            callers = concurrency // len(loads) + (1 if i < concurrency % len(loads) else 0)
            load.send({"op": "run", "kind": kind, "target": target, "body": body, "callers": callers,
                       "rate": rate / len(loads) if rate else 0.0, "start_at": start_at,
                       "warmup": a.warmup, "duration": a.duration, "drain": a.drain})
        answers = [load.receive(a.warmup + a.duration + a.drain + 30.0) for load in loads]
        figures = stats.summarize(answers, a.duration)
        sampler.join(a.warmup + a.duration + 5.0)
        if len(samples) == 2 and figures["calls"]:
            figures["cpu_us_per_call"] = {role: round((samples[1][role] - samples[0][role]) / figures["calls"]
                                                      * 1e6, 1) for role in samples[0]}
        figures["load_processes"] = len(loads)
        if self.server is None:
            return figures
        figures["server_rss_kb"] = rss_kb(self.server.pid)
        kids = [rss_kb(pid) for pid in descendants(self.server.pid)]
        figures["server_children_rss_kb"] = sum(k for k in kids if k) if kids else 0
        return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [n.strip() for n in args.phases.split(",") if n.strip()]
    bench = Bench(args)
    bodies = {"raw": ("raw", request_body("echo", '"x"')), "null": ("rpc", request_body("echo", '"x"')),
              "payload": ("rpc", request_body("echo", payload_params(args.payload_size)))}
    result: dict[str, Any] = {
        "config": {"duration": args.duration, "warmup": args.warmup, "concurrency": args.concurrency,
                   "mode": args.mode, "workers": args.workers, "client": args.client,
                   "server_opts": args.server_opt,
                   "payload_size": args.payload_size, "load_processes": args.load_processes,
                   "phases": names, "open_loop_fraction": args.open_loop_fraction,
                   "bodies": {name: body for name, (_k, body) in bodies.items()}},
        "machine": stats.machine_info(), "phases": [], "open_loop": None, "cost": None}
    modes = ["thread", "process"] if args.mode == "both" else [args.mode]
    result["open_loop_by_mode"] = {}
    try:
        bench.start()
        for mode in modes:
            bench.start_server(mode)
            print(f"  server in {mode} mode", file=sys.stderr, flush=True)
            _run_mode(bench, args, names, bodies, mode, result)
            bench.stop_server()
    finally:
        bench.stop()
    result["open_loop"] = result["open_loop_by_mode"].get(modes[-1])
    result["targets"] = stats.targets(result) if len(modes) == 2 else None
    if args.cost_calls > 0:
        result["cost"] = measure_cost(args.cost_calls, args.workers)
    return result


def _run_mode(bench: Bench, args: argparse.Namespace, names: list[str], bodies: dict[str, tuple[str, str]],
              mode: str, result: dict[str, Any]) -> None:
    """Every phase against the running server of ``mode``; rows go into ``result``."""
    for conc in args.concurrency:
        raw_rate = None
        for name in names:
            kind, body = bodies[name]
            figures = bench.run_phase(kind, body, conc)
            if name == "raw":
                raw_rate = figures["calls_per_s"]
            ratio = figures["calls_per_s"] / raw_rate if raw_rate else None
            result["phases"].append({"name": name, "kind": kind, "mode": mode, "concurrency": conc, **figures,
                                     "ratio": round(ratio, 3) if ratio is not None else None})
            cpu = figures.get("cpu_us_per_call") or {}
            why = stats.explain_errors(figures)
            print(f"  {mode:<7} {name:<8} c={conc:<4} {figures['calls_per_s']:>9.1f}/s  p99 "
                  f"{figures['p99_ms']} ms  errors {figures['errors']}" + (f" ({why})" if why else "")
                  + f"  server {cpu.get('server')} µs/call", file=sys.stderr, flush=True)
    nulls = [p for p in result["phases"] if p["name"] == "null" and p["mode"] == mode]
    if args.open_loop_fraction > 0 and nulls:
        top = max(nulls, key=lambda p: p["concurrency"])
        rate = top["calls_per_s"] * args.open_loop_fraction
        if rate > 0:
            figures = bench.run_phase("rpc", bodies["null"][1], top["concurrency"], rate=rate)
            result["open_loop_by_mode"][mode] = {
                "mode": mode, "fraction": args.open_loop_fraction, "of_phase": "null",
                "of_concurrency": top["concurrency"], "target_rate": round(rate, 1), **figures}


def measure_cost(calls: int, workers: int | None) -> dict[str, Any]:
    """The per-layer CPU cost, in a fresh interpreter (its threads and imports stay out of ours)."""
    cmd = [sys.executable, "-m", "sbusr.bench.cost", "--json", "--calls", str(calls)]
    if workers:
        cmd += ["--workers", str(workers)]
    print(f"  cost     {calls} calls per step, in one process", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise RuntimeError("the in-process cost measurement did not finish within 300 s") from None
    if done.returncode != 0:
        raise RuntimeError(f"the in-process cost measurement failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.warmup < 0:
        build_parser().error("--warmup cannot be negative")
    if args.cost_calls < 0:
        build_parser().error("--cost-calls cannot be negative")
    for item in args.server_opt:
        section, _, rest = item.partition(".")
        if not section or "=" not in rest or not rest.partition("=")[0]:
            build_parser().error(f"--server-opt wants SECTION.NAME=VALUE, got {item!r}")
    if args.client == "vendor":
        problem = vendor_problem()
        if problem:
            print(f"sbusr-bench: --client vendor is not usable here: {problem}", file=sys.stderr)
            return 2

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # same clean-up path as Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("sbusr-bench: interrupted; all processes stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"sbusr-bench: {exc}", file=sys.stderr)
        return 1
    out = sys.stderr if args.json == "-" else sys.stdout
    print(stats.table(result), file=out, flush=True)
    if args.json == "-":
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
