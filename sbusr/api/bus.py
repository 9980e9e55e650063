"""sbusr-api's side of the bus: its own SmartBus identity and the oslo ``RPCClient`` calls it makes.

Every bus operation goes through the standard oslo.messaging ``RPCClient`` on the ``smartbus://``
driver (its own SmartBus identity, see :func:`api_transport_url`): ``ipsc`` starts flows, ``bus``
answers peer/status queries locally, and an sbusr-server address with namespace ``sys`` (``rpc``)
reloads, pings, reports or describes the server. Those calls block, so :class:`BusApi` runs them on
a bounded thread pool, never on the IOLoop thread; the handlers only await its coroutines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from typing import Any

import oslo_messaging
from oslo_config import cfg

from sbusr import metrics, opts
from sbusr.api.errors import ApiError
from sbusr.jsonrpc.errors import INTERNAL_ERROR
from sbusr.smartbus import codec
from sbusr.smartbus.interface import FlowOutcomeUnknown, NotConnected
from sbusr.transport.flows import FlowRejected
from sbusr.transport.peers import IpscUnavailable
from sbusr.transport.senders import RemoteError
from sbusr.transport.url import client_config_from_url

#: how long /health waits for the sbusr-server to answer sys.ping
HEALTH_PING_TIMEOUT = 2.0


def api_transport_url(conf: cfg.ConfigOpts) -> oslo_messaging.TransportURL:
    """The configured transport URL with the API's own SmartBus identity in its query.

    ``client_id`` becomes ``[api] client_id`` (default: the configured client id + 1) and
    ``unit_id`` becomes ``[api] unit_id`` when set, so that the API and sbusr-server can
    share one configuration file without colliding on the bus.
    """
    url = oslo_messaging.TransportURL.parse(conf, opts.transport_url(conf))
    base = client_config_from_url(conf, url)
    client_id = conf.api.client_id if conf.api.client_id is not None else base.client_id + 1
    if client_id > 127:
        raise ValueError(f"the API's SmartBus client id would be {client_id}; set [api] client_id (0..127)")
    url.query = dict(url.query, client_id=str(client_id))
    if conf.api.unit_id is not None:
        url.query["unit_id"] = str(conf.api.unit_id)
    return url


def server_address(conf: cfg.ConfigOpts) -> str:
    """``unit:client`` of the sbusr-server that /sys/reset and /health address."""
    base = client_config_from_url(conf, oslo_messaging.TransportURL.parse(conf, opts.transport_url(conf)))
    unit = conf.api.server_unit_id if conf.api.server_unit_id is not None else base.unit_id
    client = conf.api.server_client_id if conf.api.server_client_id is not None else base.client_id
    return f"{unit}:{client}"


def make_transport(conf: cfg.ConfigOpts) -> oslo_messaging.Transport:
    return oslo_messaging.get_rpc_transport(conf, url=api_transport_url(conf))


def ipsc_peers(peers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The IPSC processes among the bus's peers (the ones a flow can be started on)."""
    return [p for p in peers if p.get("type") == codec.CLIENT_TYPE_IPSC and p.get("unit") in codec.IPSC_UNITS]


def flow_outcome(exc: BaseException) -> str:
    """The ``sbusr_api_flows_total`` outcome of a flow start that raised ``exc``."""
    if isinstance(exc, IpscUnavailable):
        return "no_ipsc"
    if isinstance(exc, FlowRejected):
        return "refused"
    if isinstance(exc, oslo_messaging.MessagingTimeout):
        return "timeout"
    if isinstance(exc, NotConnected):
        return "not_connected"
    if isinstance(exc, FlowOutcomeUnknown):
        return "unknown"
    if isinstance(exc, ApiError) and exc.status_code == 503:
        return "busy"
    return "error"


class BusApi:
    """The RPC clients and the thread pool the handlers share; holds no per-request state."""

    def __init__(self, conf: cfg.ConfigOpts, transport: oslo_messaging.Transport) -> None:
        self.conf = conf
        self.transport = transport
        self.server = server_address(conf)
        workers = max(4, conf.executor_thread_pool_size)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                               thread_name_prefix="sbusr-api-rpc")
        #: calls allowed to run or wait for a thread; beyond this a request gets 503 at once
        self.max_in_flight = workers * 4
        self._flows = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="ipsc"),
                                                    timeout=conf.api.flow_ack_timeout)
        self._bus = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="bus"))
        sys_target = oslo_messaging.Target(topic=conf.server.topic, server=self.server, namespace="sys")
        self._reload = oslo_messaging.get_rpc_client(transport, sys_target, timeout=conf.api.reset_timeout)
        self._ping = oslo_messaging.get_rpc_client(transport, sys_target,
                                                   timeout=min(HEALTH_PING_TIMEOUT, conf.api.reset_timeout))
        rpc_target = oslo_messaging.Target(topic=conf.server.topic, server=self.server, namespace="rpc")
        self._discover = oslo_messaging.get_rpc_client(transport, rpc_target, timeout=conf.api.reset_timeout)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._closed = False
        self.metrics = metrics.api()

    @property
    def in_flight(self) -> int:
        """Bus calls running right now (for graceful shutdown and leak checks)."""
        return self._in_flight

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._closed:
                raise ApiError(503, "the API is shutting down")
            if self._in_flight >= self.max_in_flight:
                raise ApiError(503, f"{self._in_flight} bus calls already in progress; try again later")
            self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        finally:
            with self._lock:
                self._in_flight -= 1

    async def start_flow(self, request: dict[str, Any]) -> dict[str, Any]:
        """Start a flow; request and answer in the HTTP API's words (an IPSC ``server``, its ``process``)."""
        try:
            started = await self._run(self._flows.call, {}, "start_flow", project=request["project"],
                                      flow=request["flow"], params=request["params"], unit=request["server"],
                                      client=request["process"], wait=request["wait"],
                                      ack_timeout=self.conf.api.flow_ack_timeout,
                                      result_timeout=self.conf.api.flow_result_timeout)
        except Exception as exc:
            self.metrics.flow_done(flow_outcome(exc))
            raise
        self.metrics.flow_done("started", started.pop("ack_seconds", None))
        unit, client = started.pop("unit"), started.pop("client")
        return {"server": unit, "process": client, **started}

    async def peers(self) -> list[dict[str, Any]]:
        return await self._run(self._bus.call, {}, "peers")

    async def status(self) -> dict[str, Any]:
        return await self._run(self._bus.call, {}, "status")

    async def reload(self) -> Any:
        return await self._run(self._reload.call, {}, "reload")

    async def ping_server(self) -> Any:
        return await self._run(self._ping.call, {}, "ping")

    async def server_stats(self) -> Any:
        """sbusr-server's ``sys.stats``, with the short timeout of the health ping."""
        return await self._run(self._ping.call, {}, "stats")

    async def methods(self) -> Any:
        """sbusr-server's ``rpc.discover``: the OpenRPC document of its methods.

        A document too large for one SmartBus reply (-32603) is asked for namespace by namespace
        (the names from ``sys.methods``) and put together here.
        """
        try:
            return await self._run(self._discover.call, {}, "discover")
        except RemoteError as exc:
            if exc.code != INTERNAL_ERROR or "NOTIFY carries at most" not in exc.rpc_message:
                raise
        names = await self._run(self._ping.call, {}, "methods")
        document: dict[str, Any] = {}
        methods: list[dict[str, Any]] = []
        schemas: dict[str, Any] = {}
        for namespace in sorted({name.rpartition(".")[0] for name in names}):
            part = await self._run(self._discover.call, {}, "discover", namespace=namespace)
            document = document or part
            methods.extend(part.get("methods", []))
            schemas.update(part.get("components", {}).get("schemas", {}))
        document = {**document, "methods": sorted(methods, key=lambda m: m["name"])}
        if schemas:
            document["components"] = {"schemas": schemas}
        return document

    def connect(self) -> dict[str, Any]:
        """Blocking: open the bus connection now (it is lazy) and report the link status."""
        return self._bus.call({}, "status")

    def close(self) -> None:
        """Refuse new bus calls and let the pool's threads go (running calls end on their own timeouts)."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
