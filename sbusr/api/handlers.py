"""HTTP flow-launch and control API (``sbusr-api``): a Tornado application over the smartbus transport.

Every bus operation goes through the standard oslo.messaging ``RPCClient`` on the
``smartbus://`` driver (its own SmartBus identity, see :func:`api_transport_url`):
``ipsc`` starts flows, ``bus`` answers peer/status queries locally, and an sbusr-server
address with namespace ``sys`` reloads or pings the server.  Those calls block, so
they run on a bounded thread pool, never on the IOLoop thread.

Routes: ``POST /api/flow``, ``GET /api/ipsc``, ``GET /api/methods`` (sbusr-server's
``rpc.discover``; also ``/status/methods`` for the status page's login), ``GET|POST /sys/reset``,
``GET /health``, ``GET /metrics`` (Prometheus) and the status page ``GET /status`` (HTML from
``sbusr/static``, refreshed from ``GET /status/data``, which asks sbusr-server's ``sys.stats`` over
the bus).
Every error is JSON ``{"error": {"code": <http status>, "message": ...}}``; status codes:

* 400 malformed body or parameters, 401 missing/wrong bearer token, 404 unknown route
  or no IPSC matching the request on the bus, 405 wrong method, 409 the matching IPSC
  was on the bus but has left, 413 body too large;
* 502 the IPSC refused the flow (error ack: ``ack`` and ``ack_message`` in the error)
  or the server answered a reload with an error, 503 not connected to the bus,
  504 no flow ack / flow result / server answer in time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import importlib.resources
import json
import logging
import math
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import oslo_messaging
import tornado.escape
import tornado.web
from oslo_config import cfg

import sbusr
from sbusr import metrics, opts
from sbusr.driver_smartbus import RemoteError, client_config_from_url
from sbusr.jsonrpc.encoding import dumps
from sbusr.jsonrpc.errors import INTERNAL_ERROR
from sbusr.smartbus import codec
from sbusr.smartbus.interface import BusError, FlowOutcomeUnknown, NotConnected
from sbusr.transport.connection import FlowRejected, IpscUnavailable

LOG = logging.getLogger(__name__)
ACCESS_LOG = logging.getLogger("sbusr.api.access")

#: how long /health waits for the sbusr-server to answer sys.ping
HEALTH_PING_TIMEOUT = 2.0
#: project and flow are char[32] on the wire, NUL-terminated
NAME_MAX_BYTES = 31
FLOW_FIELDS = frozenset({"server", "process", "project", "flow", "params", "wait"})
#: arrays/objects nested deeper than this in a request body are refused (400), never a RecursionError
MAX_JSON_DEPTH = 32
_TRUE = frozenset({"1", "true", "yes", "on", ""})  # a bare ?wait means on
_FALSE = frozenset({"0", "false", "no", "off"})


# ---------------------------------------------------------------------------- transport identity


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


# ---------------------------------------------------------------------------- bus operations


class ApiError(tornado.web.HTTPError):
    """An HTTP error whose message (and extra fields) the client may see."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(status, "%s", message)
        self.message = message
        self.extra = extra


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


# ---------------------------------------------------------------------------- validation


def _name(body: dict[str, Any], field: str, encoding: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"'{field}' must be a non-empty string")
    if "\0" in value:
        raise ApiError(400, f"'{field}' must not contain NUL characters")
    try:
        size = len(value.encode(encoding))
    except UnicodeEncodeError:
        raise ApiError(400, f"'{field}' has characters that cannot be sent as {encoding}") from None
    if size > NAME_MAX_BYTES:
        raise ApiError(400, f"'{field}' is {size} bytes in {encoding}; the SmartBus field holds at most "
                            f"{NAME_MAX_BYTES}")
    return value


def _int(body: dict[str, Any], field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"'{field}' must be an integer {low}..{high} (or absent for a random IPSC)")
    return value


def parse_flag(raw: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ApiError(400, f"'wait' must be a boolean flag (1/0, true/false), got {raw!r}")


def parse_flow_request(raw: bytes, encoding: str, wait_flag: bool = False) -> dict[str, Any]:
    """Validate a POST /api/flow body; raises ApiError(400) with a message that says what is wrong."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # the C scanner's own depth limit; never a 500
        raise ApiError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    if _depth_exceeds(body, MAX_JSON_DEPTH):
        raise ApiError(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - FLOW_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(FLOW_FIELDS))}")
    params = body.get("params", [])
    if not isinstance(params, list):
        raise ApiError(400, "'params' must be a JSON array")
    size = len(dumps(params))
    if size > codec.MAX_FLOW_PARAMS:
        raise ApiError(400, f"'params' encode to {size} bytes; a flow start carries at most "
                            f"{codec.MAX_FLOW_PARAMS}")
    wait = body.get("wait", False)
    if not isinstance(wait, bool):
        raise ApiError(400, "'wait' must be true or false")
    return {
        "project": _name(body, "project", encoding),
        "flow": _name(body, "flow", encoding),
        "server": _int(body, "server", codec.IPSC_UNITS.start, codec.IPSC_UNITS.stop - 1),
        "process": _int(body, "process", 0, 127),
        "params": params,
        "wait": wait or wait_flag,
    }


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """JSON numbers beyond a double (``1e999``) would reach the IPSC as null: refuse them."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True if arrays/objects nest deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


# ---------------------------------------------------------------------------- handlers


class BaseHandler(tornado.web.RequestHandler):
    """JSON errors, bearer-token check, and a quiet end when the client has gone away."""

    requires_auth = True

    def initialize(self) -> None:
        self.api: BusApi = self.settings["sbusr_api"]
        self._client_gone = False

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        token = self.api.conf.api.auth_token
        if not self.requires_auth or not token:
            return
        scheme, _, supplied = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), token.encode()):
            raise ApiError(401, "a valid bearer token is required (Authorization: Bearer <token>)")

    def on_connection_close(self) -> None:
        self._client_gone = True

    def reply(self, body: Any, status: int = 200) -> None:
        if self._client_gone:
            # the bus call has finished (nothing stays pending); there is just nobody to tell
            self.set_status(499, "Client Closed Request")
            self.finish()
            return
        self.set_status(status)
        self.finish(json.dumps(body, ensure_ascii=False))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """The access log has the status; add the reason for server-side failures, a traceback for bugs."""
        if isinstance(value, ApiError):
            if value.status_code >= 500:
                LOG.warning("%s %s: %s", self.request.method, self.request.path, value.message)
            return
        if isinstance(value, tornado.web.HTTPError):
            return
        LOG.error("%s %s failed", self.request.method, self.request.path, exc_info=(typ, value, tb))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if self._client_gone:
            self.set_status(499, "Client Closed Request")  # for the access log; nobody reads the body
            self.finish()
            return
        exc = kwargs.get("exc_info", (None, None, None))[1]
        error: dict[str, Any] = {"code": status_code}
        if isinstance(exc, ApiError):
            error["message"] = exc.message
            error.update(exc.extra)
        else:
            error["message"] = self._reason
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="sbusr"')
        self.finish(json.dumps({"error": error}, ensure_ascii=False))


class NotFoundHandler(BaseHandler):
    """Unknown routes: a JSON 404 (after the token check, so routes cannot be probed without one)."""

    def prepare(self) -> None:
        super().prepare()
        raise ApiError(404, f"no such resource: {self.request.path}")


@tornado.web.stream_request_body
class BodyHandler(BaseHandler):
    """Reads the body itself so an oversized one gets a JSON 413 before it is read."""

    def prepare(self) -> None:
        super().prepare()
        self._body = bytearray()
        self._too_large = False
        limit = self.api.conf.api.max_body_size
        length = self.request.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise ApiError(413, f"the request body is {int(length)} bytes; the limit is {limit}")

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        self._body += chunk
        if len(self._body) > self.api.conf.api.max_body_size:
            self._too_large = True
            self._body = bytearray()

    def body(self) -> bytes:
        if self._too_large:
            raise ApiError(413, f"the request body exceeds {self.api.conf.api.max_body_size} bytes")
        return bytes(self._body)


class FlowHandler(BodyHandler):
    """POST /api/flow: start a flow on an IPSC (random one unless server/process say which)."""

    async def post(self) -> None:
        raw = self.body()
        wait_arg = self.get_query_argument("wait", None)
        request = parse_flow_request(raw, self.api.conf.smartbus.encoding,
                                     parse_flag(wait_arg) if wait_arg is not None else False)
        try:
            answer = await self.api.start_flow(request)
        except IpscUnavailable as exc:
            if not (await self.api.status()).get("connected"):  # the peer table is empty while offline
                raise ApiError(503, "not connected to the SmartBus; no IPSC can be reached") from None
            raise ApiError(409 if exc.known else 404, str(exc)) from None
        except FlowRejected as exc:
            raise ApiError(502, f"the IPSC refused the flow: ack {exc.ack} {exc.ack_message}".rstrip(),
                           ack=exc.ack, ack_message=exc.ack_message,
                           server=exc.source.unit if exc.source else None,
                           process=exc.source.client if exc.source else None) from None
        except oslo_messaging.MessagingTimeout as exc:
            raise ApiError(504, str(exc)) from None
        except NotConnected as exc:
            raise ApiError(503, f"not connected to the SmartBus: {exc}") from None
        except FlowOutcomeUnknown as exc:
            raise ApiError(502, f"the flow's outcome is unknown: {exc}", outcome="unknown") from None
        except (BusError, codec.CodecError) as exc:
            raise ApiError(502, f"the flow could not be started: {exc}") from None
        LOG.info("flow %s/%s started on IPSC %s/%s (invoke id %s)", request["project"], request["flow"],
                 answer.get("server"), answer.get("process"), answer.get("invoke_id"))
        self.reply(answer)


class IpscHandler(BaseHandler):
    """GET /api/ipsc: the IPSC clients currently on the bus."""

    async def get(self) -> None:
        peers = await self.api.peers()
        ipsc = [p for p in peers
                if p.get("type") == codec.CLIENT_TYPE_IPSC and p.get("unit") in codec.IPSC_UNITS]
        self.reply({"ipsc": ipsc})


class ResetHandler(BodyHandler):
    """GET or POST /sys/reset: make sbusr-server reload its endpoints; answers once it is done."""

    async def get(self) -> None:
        try:
            reloaded = await self.api.reload()
        except RemoteError as exc:
            raise ApiError(502, f"sbusr-server {self.api.server} failed to reload: {exc.rpc_message}",
                           rpc_code=exc.code, data=exc.data) from None
        except oslo_messaging.MessagingTimeout as exc:
            raise ApiError(504, str(exc)) from None
        except NotConnected as exc:
            raise ApiError(503, f"not connected to the SmartBus: {exc}") from None
        except (BusError, codec.CodecError) as exc:
            raise ApiError(502, f"could not reach sbusr-server {self.api.server}: {exc}") from None
        LOG.info("sbusr-server %s reloaded its endpoints", self.api.server)
        self.reply({"server": self.api.server, "reloaded": reloaded})

    async def post(self) -> None:
        self.body()  # enforce the size limit; the body carries nothing
        await self.get()


class HealthHandler(BaseHandler):
    """GET /health for load balancers: 200 when connected to the bus, 503 otherwise (no token needed)."""

    requires_auth = False

    async def get(self) -> None:
        try:
            status = await self.api.status()
        except Exception as exc:
            LOG.warning("health: bus status unavailable: %s", exc)
            status = {"connected": False, "error": str(exc)}
        server: dict[str, Any] = {"address": self.api.server, "reachable": False}
        if status.get("connected"):
            try:
                await self.api.ping_server()
                server["reachable"] = True
            except RemoteError as exc:  # it answered, just not to ping
                server.update(reachable=True, error=str(exc))
            except Exception as exc:
                server["error"] = str(exc) or type(exc).__name__
        body = {"status": "ok" if status.get("connected") else "unavailable", "bus": status, "server": server}
        self.reply(body, 200 if status.get("connected") else 503)


# ---------------------------------------------------------------------------- metrics and status page


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


class MetricsHandler(BaseHandler):
    """GET /metrics: this process's Prometheus metrics; a token only with ``[api] metrics_need_token``."""

    def prepare(self) -> None:
        if self.api.conf.api.metrics_need_token:
            super().prepare()

    def get(self) -> None:
        body, content_type = metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


#: the status page's cookie; its value is derived from the token, never the token itself
STATUS_COOKIE = "sbusr_status"


def _page(name: str) -> str:
    return importlib.resources.files("sbusr").joinpath("static", name).read_text(encoding="utf-8")


def status_cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"sbusr status page", hashlib.sha256).hexdigest()


class StatusHandler(BaseHandler):
    """Base of the status routes: they accept the bearer header like every route, or the login's cookie."""

    requires_auth = False  # checked by :meth:`authorised` instead

    def authorised(self) -> bool:
        token = self.api.conf.api.auth_token
        if not token:
            return True
        scheme, _, supplied = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode()):
            return True
        cookie = self.get_cookie(STATUS_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), status_cookie_value(token).encode())

    def token_matches(self, supplied: str) -> bool:
        return hmac.compare_digest(supplied.encode(), self.api.conf.api.auth_token.encode())

    def remember_login(self) -> None:
        self.set_cookie(STATUS_COOKIE, status_cookie_value(self.api.conf.api.auth_token), path="/status",
                        httponly=True, samesite="Strict")

    def html(self, name: str, status: int = 200, error: str = "") -> None:
        """One of the pages in ``sbusr/static``, under a policy that runs only its own inline code."""
        nonce = secrets.token_urlsafe(16)
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Content-Security-Policy", f"default-src 'none'; script-src 'nonce-{nonce}'; "
                        f"style-src 'nonce-{nonce}'; connect-src 'self'; img-src 'self'; form-action 'self'; "
                        "frame-ancestors 'none'; base-uri 'none'")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        page = self.settings["sbusr_pages"][name]
        self.finish(page.replace("__NONCE__", nonce).replace("__ERROR__", tornado.escape.xhtml_escape(error)))


class StatusPageHandler(StatusHandler):
    """GET /status: the page (or the login form); ``?token=`` logs in once and is dropped from the URL."""

    def get(self) -> None:
        supplied = self.get_query_argument("token", None)
        if supplied is not None and self.api.conf.api.auth_token:
            if not self.token_matches(supplied):
                self.html("login.html", 401, "That token is not valid.")
                return
            self.remember_login()
            self.redirect("status", status=303)  # the same page without the token in its address
            return
        if not self.authorised():
            self.html("login.html", 401)
            return
        self.html("status.html")


@tornado.web.stream_request_body
class StatusLoginHandler(StatusHandler, BodyHandler):
    """POST /status/login: the login form's token, checked and kept in a cookie."""

    def post(self) -> None:
        form = urllib.parse.parse_qs(self.body().decode("utf-8", errors="replace"))
        supplied = (form.get("token") or [""])[0]
        if not self.api.conf.api.auth_token:
            self.redirect("/status", status=303)
            return
        if not self.token_matches(supplied):
            self.html("login.html", 401, "That token is not valid.")
            return
        self.remember_login()
        self.redirect("/status", status=303)


class StatusLogoutHandler(StatusHandler):
    """GET /status/logout: forget the cookie."""

    def get(self) -> None:
        self.clear_cookie(STATUS_COOKIE, path="/status")
        self.redirect("/status", status=303)


class StatusDataHandler(StatusHandler):
    """GET /status/data: what the page shows, as JSON: the bus link, the IPSCs, sbusr-server's sys.stats."""

    def prepare(self) -> None:
        if not self.authorised():
            raise ApiError(401, "log in on /status first (or send Authorization: Bearer <token>)")

    async def get(self) -> None:
        bus, peers, stats = await asyncio.gather(self.api.status(), self.api.peers(), self.api.server_stats(),
                                                 return_exceptions=True)
        if isinstance(bus, BaseException):
            bus = {"connected": False, "error": str(bus) or type(bus).__name__}
        ipsc = [] if isinstance(peers, BaseException) else [
            p for p in peers if p.get("type") == codec.CLIENT_TYPE_IPSC and p.get("unit") in codec.IPSC_UNITS]
        server: dict[str, Any] = {"address": self.api.server, "reachable": False, "stats": None}
        if isinstance(stats, RemoteError):  # it answered, but not with figures (an older server, say)
            server.update(reachable=True, error=f"sys.stats failed: {stats}")
        elif isinstance(stats, BaseException):
            server["error"] = str(stats) or type(stats).__name__
        else:
            server.update(reachable=True, stats=stats)
        self.reply({"time": round(time.time(), 3),
                    "api": {"version": sbusr.__version__, "auth": bool(self.api.conf.api.auth_token)},
                    "bus": bus, "ipsc": ipsc, "server": server})


class MethodsHandler(StatusHandler):
    """GET /api/methods (and /status/methods, the status page's link): sbusr-server's OpenRPC document,
    asked for over the bus with ``rpc.discover``."""

    def prepare(self) -> None:
        if not self.authorised():
            raise ApiError(401, "a valid bearer token is required (Authorization: Bearer <token>)")

    async def get(self) -> None:
        try:
            document = await self.api.methods()
        except RemoteError as exc:
            raise ApiError(502, f"sbusr-server {self.api.server} answered rpc.discover with an error: "
                           f"{exc.rpc_message}", rpc_code=exc.code) from None
        except oslo_messaging.MessagingTimeout as exc:
            raise ApiError(504, str(exc)) from None
        except NotConnected as exc:
            raise ApiError(503, f"not connected to the SmartBus: {exc}") from None
        except (BusError, codec.CodecError) as exc:
            raise ApiError(502, f"could not reach sbusr-server {self.api.server}: {exc}") from None
        self.reply(document)


class StatusMethodsHandler(MethodsHandler):
    """GET /status/methods: the same document, where the status page's login cookie is sent."""


# ---------------------------------------------------------------------------- application


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log: method, path, status, duration (never the query string, which may carry secrets)."""
    status = handler.get_status()
    routes = handler.settings.get("sbusr_routes", {})
    metrics.api().http_request(routes.get(type(handler), "<other>"), status)
    level = logging.INFO if status < 500 else logging.WARNING
    ACCESS_LOG.log(level, "%s %s %d %.1fms %s", handler.request.method, handler.request.path, status,
                   1000.0 * handler.request.request_time(), handler.request.remote_ip)


def make_app(conf: cfg.ConfigOpts, transport: oslo_messaging.Transport) -> tornado.web.Application:
    """The Tornado application; ``app.settings["sbusr_api"]`` is the :class:`BusApi` (close it when done)."""
    api = BusApi(conf, transport)
    routes: list[tuple[str, type[tornado.web.RequestHandler]]] = [
        (r"/api/flow", FlowHandler),
        (r"/api/ipsc", IpscHandler),
        (r"/api/methods", MethodsHandler),
        (r"/sys/reset", ResetHandler),
        (r"/health", HealthHandler),
        (r"/metrics", MetricsHandler),
        (r"/status", StatusPageHandler),
        (r"/status/data", StatusDataHandler),
        (r"/status/methods", StatusMethodsHandler),
        (r"/status/login", StatusLoginHandler),
        (r"/status/logout", StatusLogoutHandler),
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        sbusr_api=api,
        sbusr_routes={handler: pattern for pattern, handler in routes},  # the route label of the metrics
        sbusr_pages={name: _page(name) for name in ("status.html", "login.html")},
        compress_response=False,
        serve_traceback=False,
    )


def server_options(conf: cfg.ConfigOpts) -> dict[str, Any]:
    """``HTTPServer`` keyword arguments: the connection-level body limit backs up the handlers' check."""
    return {"max_body_size": conf.api.max_body_size, "idle_connection_timeout": 60.0, "body_timeout": 30.0}
