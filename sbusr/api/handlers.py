"""sbusr-api's JSON routes: flows, IPSCs, reset, health, metrics, and what every handler shares.

:class:`BaseHandler` gives every route the same contract: the bearer-token check, errors as JSON
``{"error": {"code": <http status>, "message": ...}}`` (an :class:`ApiError`'s message and extra
fields, never a traceback), and a quiet 499 when the client went away while its bus call ran.
:class:`BodyHandler` reads the body itself so that an oversized one gets that JSON 413 too. The
bus's exceptions become statuses here, one mapping per route.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

import oslo_messaging
import tornado.web

from sbusr import metrics
from sbusr.api.bus import BusApi, ipsc_peers
from sbusr.api.errors import ApiError, asking_server
from sbusr.api.requests import parse_flag, parse_flow_request
from sbusr.smartbus import codec
from sbusr.smartbus.interface import BusError, FlowOutcomeUnknown, NotConnected
from sbusr.transport.flows import FlowRejected
from sbusr.transport.peers import IpscUnavailable
from sbusr.transport.senders import RemoteError

LOG = logging.getLogger(__name__)


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
        if self.requires_auth and not self.bearer_ok():
            raise ApiError(401, "a valid bearer token is required (Authorization: Bearer <token>)")

    def bearer_ok(self) -> bool:
        """True when no token is configured or the request carries it as ``Authorization: Bearer``."""
        token = self.api.conf.api.auth_token
        if not token:
            return True
        scheme, _, supplied = self.request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode())

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
        self.reply({"ipsc": ipsc_peers(await self.api.peers())})


class ResetHandler(BodyHandler):
    """GET or POST /sys/reset: make sbusr-server reload its endpoints; answers once it is done."""

    async def get(self) -> None:
        with asking_server(self.api.server, "failed to reload"):
            reloaded = await self.api.reload()
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


class MetricsHandler(BaseHandler):
    """GET /metrics: this process's Prometheus metrics; a token only with ``[api] metrics_need_token``."""

    def prepare(self) -> None:
        if self.api.conf.api.metrics_need_token:
            super().prepare()

    def get(self) -> None:
        body, content_type = metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(body)
