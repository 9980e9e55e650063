"""The HTTP flow-launch and control API (``sbusr-api``): its routes and the Tornado application.

Routes: ``POST /api/flow``, ``GET /api/ipsc``, ``GET /api/methods`` (sbusr-server's
``rpc.discover``; also ``/status/methods`` for the status page's login), ``GET|POST /sys/reset``,
``GET /health``, ``GET /metrics`` (Prometheus) and the status page ``GET /status`` (templates in
``sbusr/api/templates``, refreshed from ``GET /status/data``, which asks sbusr-server's
``sys.stats`` over the bus). Every bus call goes through :class:`sbusr.api.bus.BusApi`.
Every error is JSON ``{"error": {"code": <http status>, "message": ...}}``; status codes:

* 400 malformed body or parameters, 401 missing/wrong bearer token, 404 unknown route
  or no IPSC matching the request on the bus, 405 wrong method, 409 the matching IPSC
  was on the bus but has left, 413 body too large;
* 502 the IPSC refused the flow (error ack: ``ack`` and ``ack_message`` in the error)
  or the server answered a reload with an error, 503 not connected to the bus,
  504 no flow ack / flow result / server answer in time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import tornado.web
from oslo_config import cfg

from sbusr import metrics
from sbusr.api import handlers, status
from sbusr.api.bus import BusApi

ACCESS_LOG = logging.getLogger("sbusr.api.access")
TEMPLATES = Path(__file__).with_name("templates")

ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/api/flow", handlers.FlowHandler),
    (r"/api/ipsc", handlers.IpscHandler),
    (r"/api/methods", status.MethodsHandler),
    (r"/sys/reset", handlers.ResetHandler),
    (r"/health", handlers.HealthHandler),
    (r"/metrics", handlers.MetricsHandler),
    (r"/status", status.StatusPageHandler),
    (r"/status/data", status.StatusDataHandler),
    (r"/status/methods", status.StatusMethodsHandler),
    (r"/status/login", status.StatusLoginHandler),
    (r"/status/logout", status.StatusLogoutHandler),
]


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log: method, path, status, duration (never the query string, which may carry secrets)."""
    code = handler.get_status()
    routes = handler.settings.get("sbusr_routes", {})
    metrics.api().http_request(routes.get(type(handler), "<other>"), code)
    level = logging.INFO if code < 500 else logging.WARNING
    ACCESS_LOG.log(level, "%s %s %d %.1fms %s", handler.request.method, handler.request.path, code,
                   1000.0 * handler.request.request_time(), handler.request.remote_ip)


def make_app(api: BusApi) -> tornado.web.Application:
    """The Tornado application over ``api`` (``app.settings["sbusr_api"]``; the caller closes it)."""
    return tornado.web.Application(
        ROUTES,
        default_handler_class=handlers.NotFoundHandler,
        log_function=log_request,
        sbusr_api=api,
        sbusr_routes={handler: pattern for pattern, handler in ROUTES},  # the route label of the metrics
        template_path=str(TEMPLATES),
        autoescape="xhtml_escape",
        template_whitespace="all",  # the pages' inline script and style as written
        cookie_secret=status.cookie_secret(api.conf.api.auth_token),
        compress_response=False,
        serve_traceback=False,
    )


def server_options(conf: cfg.ConfigOpts) -> dict[str, Any]:
    """``HTTPServer`` keyword arguments: the connection-level body limit backs up the handlers' check."""
    return {"max_body_size": conf.api.max_body_size, "idle_connection_timeout": 60.0, "body_timeout": 30.0}
