"""CPU cost per call of each layer of the RPC path, measured in this process with no bus.

Wall-clock rates on a shared machine swing from run to run; CPU time per call, layer by layer,
swings much less, so this is the figure to compare before and after a change. Each step serves the
``echo`` method of the built-in endpoints in thread mode with the server's own executor pool
size; times are ``time.process_time`` (all threads of this process) per call. The parsing and
RPCServer steps run in rounds of 200 calls in one thread and report the cheapest round; so does the
metrics step, the recording each answered call costs (already inside the parsing and RPCServer
figures; shown on its own because it is small and the machine's noise is not).
``python -m sbusr.bench.cost`` prints them; ``sbusr-bench`` includes them in its report.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

ECHO_REQUEST = b'{"jsonrpc":"2.0","id":"1","method":"echo","params":["x"]}'
ROUND = 200  # requests parsed per round: well inside the server's admission limit
IN_FLIGHT = 64
REPLY_TIMEOUT = 30.0


class _StubConnection:
    """Stands in for the bus connection: takes the request sink, counts the replies."""

    def __init__(self) -> None:
        self.sink: Callable[[Any], None] | None = None
        self.on_reply: Callable[[], None] = lambda: None
        self.replies = 0
        self.last_reply = b""

    def set_request_sink(self, sink: Callable[[Any], None] | None) -> None:
        self.sink = sink

    def open_exchange(self, packet: Any) -> Any:
        from sbusr.transport.exchange import Exchange

        return Exchange(self)  # type: ignore[arg-type]

    def send_reply(self, to: Any, title: str, body: bytes) -> None:
        self.replies += 1  # only the step that runs in one thread reads these
        self.last_reply = body
        self.on_reply()

    def release(self) -> None:
        self.sink = None


def _cpu_us(fn: Callable[[], None], calls: int) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) / calls * 1e6


def _best(round_times: list[float]) -> float:
    """µs per call of the cheapest round: the cost with the least interference from the machine."""
    return round(min(round_times) / ROUND * 1e6, 1)


def _wait(semaphore: threading.Semaphore) -> None:
    if not semaphore.acquire(timeout=REPLY_TIMEOUT):
        raise RuntimeError(f"echo calls got no reply within {REPLY_TIMEOUT} s")


def _check_answers(conn: _StubConnection, calls: int) -> None:
    """A cost is only worth printing if every call was answered with a result."""
    if conn.replies != calls or b'"result":"x"' not in conn.last_reply:
        raise RuntimeError(f"{conn.replies} replies to {calls} echo calls; last: {conn.last_reply[:200]!r}")


def _request_packet() -> Any:
    from sbusr.smartbus import codec

    caller, server = codec.Address(1, 1, 2), codec.Address(19, 1, -1)
    frame = codec.encode_data(caller, server, 1, codec.CMDTYPE_RPC, ECHO_REQUEST)
    return codec.decode_packet(frame)


def _metrics_us(calls: int) -> float:
    """sbusr.metrics' recording of one answered call, sorting into the rolling window included."""
    from prometheus_client import CollectorRegistry

    from sbusr import metrics

    recorder = metrics.RequestMetrics(CollectorRegistry())
    recorder.set_methods(["echo"])
    rounds: list[float] = []
    for _ in range(max(1, calls // ROUND)):
        start = time.process_time()
        for _ in range(ROUND):
            recorder.request_done("echo", None, recorder.request_received())
        recorder.window.fold()
        rounds.append(time.process_time() - start)
    return _best(rounds)


def _executor_hop_us(pool_size: int, calls: int) -> float:
    """futurist's ThreadPoolExecutor, as RPCServer uses it: no-op tasks, IN_FLIGHT at a time."""
    import futurist

    executor = futurist.ThreadPoolExecutor(max_workers=pool_size)
    window = threading.Semaphore(IN_FLIGHT)
    done = threading.Semaphore(0)

    def task() -> None:
        window.release()
        done.release()

    def run() -> None:
        for _ in range(calls):
            _wait(window)
            executor.submit(task)
        for _ in range(calls):
            _wait(done)

    try:
        return _cpu_us(run, calls)
    finally:
        executor.shutdown()


def measure(calls: int = 20000, workers: int | None = None) -> dict[str, Any]:
    """CPU µs per ``echo`` call for each layer, and the in-process rate of the whole path."""
    import oslo_messaging
    from oslo_config import cfg

    from sbusr import dispatch, metrics, opts
    from sbusr.execution import threads

    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("mode", "thread", group="execution")
    if workers:
        conf.set_override("workers", workers, group="execution")
    pool_size = threads.executor_pool_size(conf)
    conf.set_override("executor_thread_pool_size", pool_size)
    url = oslo_messaging.TransportURL.parse(conf, "smartbus://127.0.0.1:1/")
    transport = oslo_messaging.get_rpc_transport(conf, url=url)
    conn = _StubConnection()
    transport._driver._connection = conn  # never connects: requests are fed to the listener's sink
    packet = _request_packet()
    registry = dispatch.load_endpoints(conf)
    metrics.requests().set_methods(registry.methods())  # as sbusr-server does: calls counted under "echo"
    executor = threads.ThreadExecutor(conf.execution.workers, conf.execution.call_timeout)
    executor.bind(registry)
    executor.start()
    server = dispatch.rpc_server(transport, oslo_messaging.Target(topic="cost", server="19:1"),
                                 registry.adapters)
    server.start()
    try:
        assert conn.sink is not None
        sink = conn.sink
        listener = server.listener
        deliver = listener.on_incoming_callback  # oslo's hand-over to its executor
        captured: list[Any] = []
        listener.on_incoming_callback = captured.append  # layer by layer first, in this thread
        parse_rounds: list[float] = []
        process_rounds: list[float] = []
        rounds = max(1, calls // ROUND)
        for _ in range(rounds):
            captured.clear()
            start = time.process_time()
            for _ in range(ROUND):
                sink(packet)
            middle = time.process_time()
            for incoming in captured:
                server._process_incoming(incoming)  # the RPCServer's per-message work, in this thread
            parse_rounds.append(middle - start)
            process_rounds.append(time.process_time() - middle)
        _check_answers(conn, rounds * ROUND)

        listener.on_incoming_callback = deliver
        window = threading.Semaphore(IN_FLIGHT)
        answered = threading.Semaphore(0)

        def replied() -> None:
            window.release()
            answered.release()

        conn.on_reply = replied

        def whole_path() -> None:
            for _ in range(calls):
                _wait(window)
                sink(packet)
            for _ in range(calls):
                _wait(answered)

        wall = time.perf_counter()
        total_us = _cpu_us(whole_path, calls)
        wall = time.perf_counter() - wall
        return {
            "calls": calls,
            "executor_pool_size": pool_size,
            "parse_us": _best(parse_rounds),
            "rpcserver_us": _best(process_rounds),
            "executor_hop_us": round(_executor_hop_us(pool_size, calls), 1),
            "metrics_us": _metrics_us(calls),
            "total_us": round(total_us, 1),
            "total_calls_per_s": round(calls / wall),
        }
    finally:
        server.stop()
        server.wait()
        executor.shutdown()
        transport.cleanup()


def format_report(cost: dict[str, Any]) -> str:
    return "\n".join([
        f"CPU per echo call in one process, no bus (thread mode, {IN_FLIGHT} in flight, "
        f"executor pool {cost['executor_pool_size']}):",
        f"  request parsing (driver)                          {cost['parse_us']:7.1f} us",
        f"  executor hop (futurist ThreadPoolExecutor)        {cost['executor_hop_us']:7.1f} us",
        f"  RPCServer: oslo dispatch, method, reply encoding  {cost['rpcserver_us']:7.1f} us",
        f"  metrics recording (sbusr.metrics; in both above) {cost['metrics_us']:7.1f} us",
        f"  whole path, threads contending                    {cost['total_us']:7.1f} us "
        f"({cost['total_calls_per_s']} calls/s)",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sbusr.bench.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20000, help="calls per step (default %(default)s)")
    p.add_argument("--workers", type=int, help="[execution] workers (default: its own)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    a = p.parse_args(argv)
    with warnings.catch_warnings():  # importing oslo/futurist imports eventlet, which warns about itself
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
        cost = measure(a.calls, a.workers)
    print(json.dumps(cost) if a.json else format_report(cost))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
