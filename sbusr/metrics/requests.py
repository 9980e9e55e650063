"""sbusr-server's request metrics and the recording API the request path calls.

Transport-neutral: whatever receives a request packet and sends its reply (the SmartBus driver's
listener in thread mode, a master process relaying to workers) calls :meth:`RequestMetrics.request_received`
when the packet arrives and :meth:`RequestMetrics.request_done` once per call when its reply has gone out.

Why a custom collector for the per-request series: prometheus_client's labelled Counter and
Histogram children take a lock each and cost about 2.7 µs per call together on the test machine,
half the 5 µs budget, while the status page needs its own latency bins anyway. So each call is
counted once, into :class:`sbusr.metrics.window.RollingWindow`, and ``sbusr_requests_total``,
``sbusr_request_duration_seconds`` and ``sbusr_requests_in_flight`` are read from there at scrape
time. The rare events (worker restarts, reloads, worker states) use prometheus_client's own types.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from sbusr.metrics.window import FOLD_AT, RollingWindow

LOG = logging.getLogger(__name__)

#: the method label of every call whose name is not one the server loaded
UNKNOWN_METHOD = "<unknown>"
#: the outcome label of a call answered with a result
RESULT = "result"
WORKER_STATES = ("idle", "busy", "starting")
RESTART_REASONS = ("crash", "timeout", "recycle", "reload")
#: the execution layer's words for why a worker was replaced -> the metric's reasons
_REASONS = {"crash": "crash", "timeout": "timeout", "max_tasks_per_child": "recycle", "recycle": "recycle",
            "reload": "reload"}

ExecutorStats = Callable[[], dict[str, Any]]


class RequestMetrics:
    """The server's metrics on one registry, plus the rolling window ``sys.stats`` reports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.window = RollingWindow()
        self._pending = self.window.pending
        self._count_received = self.window.count_received
        self._known: frozenset[str] = frozenset()
        self._sampler: ExecutorStats | None = None
        self._sample_lock = threading.Lock()
        self._restarts_seen: dict[str, int] = {}
        self._reload_count = 0
        # registered before the gauges and counters below, which a registry collects in that order:
        # collect() samples the execution stats into them first, so a scrape never shows stale ones
        registry.register(self)
        self._queued = Gauge("sbusr_requests_queued", "Requests received and waiting for a worker.",
                             registry=registry)
        self._workers = Gauge("sbusr_workers", "Workers (threads or processes) by state.", ["state"],
                              registry=registry)
        self._restarts = Counter("sbusr_worker_restarts", "Workers replaced, by reason.", ["reason"],
                                 registry=registry)
        self._reloads = Counter("sbusr_reloads", "Endpoint reloads done (SIGHUP, sys.reload, /sys/reset).",
                                registry=registry)
        for state in WORKER_STATES:
            self._workers.labels(state)
        for reason in RESTART_REASONS:
            self._restarts.labels(reason)

    # ------------------------------------------------------------------ the request path

    def set_methods(self, names: Iterable[str]) -> None:
        """The method names loaded now; any other name is counted as ``<unknown>``."""
        self._known = frozenset(names)

    def request_received(self, calls: int = 1) -> float:
        """A request packet carrying ``calls`` calls that will be answered arrived: the start time."""
        if calls == 1:
            self._count_received()
        else:
            self.window.receive(calls)
        return perf_counter()

    def request_done(self, method: str, code: int | None, started: float, caller: Any = None,
                     message: Any = None) -> None:
        """One call's reply was sent: ``code`` None for a result, else its JSON-RPC error code.

        ``caller`` (the requesting address) and ``message`` (the error text) are kept for the last
        errors only; they are turned into text only for errors.
        """
        now = perf_counter()
        pending = self._pending  # window.record without its call: this runs once per call
        pending.append((method if method in self._known else UNKNOWN_METHOD, code, now - started, now, caller,
                        message))
        if len(pending) >= FOLD_AT:
            self.window.fold(blocking=False)

    # ------------------------------------------------------------------ workers and reloads

    def set_queued(self, n: int) -> None:
        self._queued.set(n)

    def set_workers(self, idle: int = 0, busy: int = 0, starting: int = 0) -> None:
        self._workers.labels("idle").set(idle)
        self._workers.labels("busy").set(busy)
        self._workers.labels("starting").set(starting)

    def worker_restarted(self, reason: str, count: int = 1) -> None:
        """A worker was replaced: ``crash``, ``timeout``, ``recycle`` or ``reload``."""
        self._restarts.labels(_REASONS.get(reason, reason)).inc(count)

    def reload_done(self) -> None:
        self._reload_count += 1
        self._reloads.inc()

    def sample_executor(self, stats: ExecutorStats | None) -> None:
        """Read worker states (and restarts) from ``stats()`` whenever metrics are collected.

        ``stats()`` is the execution layer's summary: ``idle``/``busy``/``starting`` (worker
        processes) or ``threads`` (thread mode, where busy and queued follow from the calls in
        flight), and optionally ``replaced``: {reason: count since start} and ``in_flight`` (calls
        held, when the execution layer knows better than the received-minus-answered count).
        """
        self._sampler = stats

    def _sample(self) -> dict[str, Any]:
        sampler = self._sampler
        if sampler is None:
            return {}
        try:
            stats = dict(sampler())
        except Exception as exc:  # a metrics read must never break a scrape or sys.stats
            LOG.warning("execution stats unavailable: %s", exc)
            return {}
        in_flight = self.window.in_flight
        with self._sample_lock:
            if "threads" in stats and "idle" not in stats:
                threads = int(stats["threads"])
                busy = min(in_flight, threads)
                workers = {"idle": threads - busy, "busy": busy, "starting": 0}
                queued = max(0, in_flight - threads)
            else:
                idle, busy = int(stats.get("idle", 0)), int(stats.get("busy", 0))
                starting = int(stats.get("starting", max(0, int(stats.get("workers", 0)) - idle - busy)))
                workers = {"idle": idle, "busy": busy, "starting": starting}
                queued = int(stats.get("queued", 0))
            self.set_workers(**workers)
            self.set_queued(queued)
            for reason, total in dict(stats.get("replaced") or {}).items():
                seen = self._restarts_seen.get(reason, 0)
                if total > seen and reason in _REASONS:
                    self.worker_restarted(reason, total - seen)
                self._restarts_seen[reason] = max(seen, total)
        sampled: dict[str, Any] = {"workers": workers, "queued": queued}
        if "in_flight" in stats:  # a process-mode master counts what its workers hold
            sampled["in_flight"] = int(stats["in_flight"])
        return sampled

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> dict[str, Any]:
        """The figures behind the status page (JSON-friendly), with the worker states sampled now."""
        sampled = self._sample()
        out = self.window.snapshot()
        out.update(sampled)
        out["reloads"] = self._reload_count
        return out

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        sampled = self._sample()
        in_flight = sampled.get("in_flight")
        yield from self._families(self.window.totals(),
                                  self.window.in_flight if in_flight is None else in_flight)

    def _families(self, totals: dict[str, Any] | None = None, in_flight: int = 0) -> Iterator[Metric]:
        requests = CounterMetricFamily("sbusr_requests", "JSON-RPC calls answered, by method and outcome "
                                       "(result, or the JSON-RPC error code).", labels=["method", "outcome"])
        durations = HistogramMetricFamily("sbusr_request_duration_seconds", "Time from request packet "
                                          "received to reply sent.", labels=["method"])
        for method, cell in sorted((totals or {}).items()):
            for code, n in sorted(cell.outcomes.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0)):
                requests.add_metric([method, RESULT if code is None else str(code)], n)
            durations.add_metric([method], cell.prometheus_buckets(), sum_value=cell.seconds)
        yield requests
        yield durations
        yield GaugeMetricFamily("sbusr_requests_in_flight", "Calls received and not yet answered.",
                                value=in_flight)
