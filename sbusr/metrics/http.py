"""sbusr-api's metrics: flow starts, their ack times, and HTTP requests by route."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: outcomes of POST /api/flow that reached the point of starting a flow
FLOW_OUTCOMES = ("started", "refused", "timeout", "no_ipsc", "not_connected", "unknown", "busy", "error")
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiMetrics:
    """``sbusr_api_flows_total``, ``sbusr_api_flow_ack_seconds``, ``sbusr_api_requests_total``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._flows = Counter("sbusr_api_flows", "Flow starts by outcome.", ["outcome"], registry=registry)
        self._ack = Histogram("sbusr_api_flow_ack_seconds", "Time from sending a flow start to the IPSC's "
                              "acknowledgement.", buckets=ACK_BUCKETS, registry=registry)
        self._requests = Counter("sbusr_api_requests", "HTTP requests by route and status.",
                                 ["route", "status"], registry=registry)
        for outcome in FLOW_OUTCOMES:
            self._flows.labels(outcome)

    def flow_done(self, outcome: str, ack_seconds: float | None = None) -> None:
        self._flows.labels(outcome if outcome in FLOW_OUTCOMES else "error").inc()
        if ack_seconds is not None:
            self._ack.observe(ack_seconds)

    def http_request(self, route: str, status: int) -> None:
        """``route`` is the route pattern (never the raw path, so the label set stays small)."""
        self._requests.labels(route, str(status)).inc()
