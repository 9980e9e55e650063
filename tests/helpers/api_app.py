"""sbusr-api's Tornado application in the pytest process, over a stand-in for its bus side.

For tests whose subject is the HTTP layer (request checks, tokens, the status page's login), not
the bus: :class:`FakeBusApi` answers the calls :class:`sbusr.api.bus.BusApi` makes with fixed
figures and records the flow starts, so a test can also show that a refused request never
reached the bus.
"""

from __future__ import annotations

from typing import Any

import tornado.web
from oslo_config import cfg
from tornado.testing import AsyncHTTPTestCase

from sbusr import opts
from sbusr.api import app as api_app
from sbusr.smartbus import codec

#: the limits the API tests run with (small, so an oversized body is cheap to send)
API_OPTS: dict[str, Any] = {"flow_ack_timeout": 1, "flow_result_timeout": 2, "max_body_size": 16384,
                            "reset_timeout": 3}
IPSC = {"unit": 0, "client": 1, "type": codec.CLIENT_TYPE_IPSC, "add_info": "fake-ipsc-0-1"}


def make_conf(**api: Any) -> cfg.ConfigOpts:
    """sbusr's options with no config file; ``api`` overrides ``[api]`` (on top of :data:`API_OPTS`)."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project="sbusr-test", default_config_files=[])
    for name, value in {**API_OPTS, **api}.items():
        conf.set_override(name, value, "api")
    return conf


class FakeBusApi:
    """What the handlers ask of BusApi, answered without a bus; ``flows`` holds every flow start."""

    server = "19:1"
    in_flight = 0

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        self.conf = conf
        self.flows: list[dict[str, Any]] = []
        self.reloads = 0

    async def start_flow(self, request: dict[str, Any]) -> dict[str, Any]:
        self.flows.append(request)
        return {"server": IPSC["unit"], "process": IPSC["client"], "invoke_id": len(self.flows), "ack": 1,
                "message": "started"}

    async def peers(self) -> list[dict[str, Any]]:
        other = {"unit": 21, "client": 2, "type": codec.CLIENT_TYPE_IPSC + 1, "add_info": "not an IPSC"}
        return [IPSC, other]

    async def status(self) -> dict[str, Any]:
        return {"connected": True, "ipsc": 1}

    async def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return {"methods": ["echo"]}

    async def ping_server(self) -> str:
        return "pong"

    async def server_stats(self) -> dict[str, Any]:
        return {"mode": "thread", "methods": []}

    async def methods(self) -> dict[str, Any]:
        return {"openrpc": "1.3.2", "methods": [{"name": "echo"}]}

    def close(self) -> None:
        pass


class ApiAppTestCase(AsyncHTTPTestCase):
    """The application on a :class:`FakeBusApi`; ``api_options`` are this class's ``[api]`` overrides."""

    api_options: dict[str, Any] = {}

    def setUp(self) -> None:
        self.conf = make_conf(**self.api_options)
        self.bus = FakeBusApi(self.conf)
        super().setUp()

    def get_app(self) -> tornado.web.Application:
        return api_app.make_app(self.bus)  # type: ignore[arg-type]  # the stand-in has BusApi's surface

    def get_httpserver_options(self) -> dict[str, Any]:
        return api_app.server_options(self.conf)
