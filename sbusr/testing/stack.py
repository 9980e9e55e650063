"""A whole sbusr stack for one test: development bus, sbusr-server, an IPSC stand-in, sbusr-api.

Every part is a real process or socket on free ports, started as an operator would start it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from sbusr.testing.api_process import ApiProcess
from sbusr.testing.identities import Identities
from sbusr.testing.ipsc import FakeIpsc
from sbusr.testing.processes import (
    SERVER_CLIENT,
    SERVER_UNIT,
    BusProcess,
    ServerProcess,
    free_port,
    write_config,
)
from sbusr.testing.waiting import wait_for

#: seconds a new sbusr-api may take to hear from the IPSC stand-in (a busy machine is slow, not wrong)
API_SEES_IPSC_TIMEOUT = 60.0


class Stack:
    """``with Stack(endpoints=[folder], config={...}) as stack: stack.ipsc.call("echo", ["x"])``.

    ``endpoints``: folders of endpoint files (``[endpoints] directories``); ``config``: more options,
    ``{"section": {"option": value}}`` (e.g. ``{"execution": {"mode": "process"}}``). The IPSC
    stand-in acknowledges flow starts (see ``FakeIpsc.on_flow``).

    By default the stack starts its own bus: the server is 19:1 and the IPSC stand-in unit 0,
    process 0. With ``bus`` (a running :class:`BusProcess` shared by many stacks, e.g. the
    ``sbusr_bus`` fixture's) and ``identities`` (that bus's :class:`Identities`), the stack neither
    starts nor stops the bus and takes free addresses for its server, IPSC stand-in and APIs
    (``server_address``, ``ipsc_unit``/``ipsc_process`` say which).
    """

    def __init__(self, endpoints: list[str | os.PathLike[str]] | None = None,
                 config: dict[str, dict[str, Any]] | None = None,
                 workdir: str | os.PathLike[str] | None = None,
                 ipsc_unit: int | None = None, ipsc_process: int | None = None, *,
                 bus: BusProcess | None = None, identities: Identities | None = None) -> None:
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="sbusr-stack-")
        self.workdir = Path(workdir if workdir is not None else self._tmp.name)  # type: ignore[union-attr]
        self.endpoints = [os.fspath(Path(e).resolve()) for e in endpoints or []]
        self.config = {k: dict(v) for k, v in (config or {}).items()}
        self._own_bus = bus is None
        if bus is not None and identities is None:
            raise ValueError("a shared bus needs the Identities that hand out its addresses")
        self.identities = identities
        self.bus = bus if bus is not None else BusProcess()
        if identities is not None:
            self._server_address = identities.server()
            unit, process = identities.ipsc()
        else:
            self._server_address, (unit, process) = (SERVER_UNIT, SERVER_CLIENT), (0, 0)
        self.ipsc_unit = ipsc_unit if ipsc_unit is not None else unit
        self.ipsc_process = ipsc_process if ipsc_process is not None else process
        #: sbusr-server's Prometheus listener (``[metrics] port``), on a free port unless ``config`` sets one
        self.metrics_port = int(self.config.get("metrics", {}).get("port", free_port()))
        self.server: ServerProcess | None = None
        self.ipsc: FakeIpsc | None = None
        self._apis: list[ApiProcess] = []

    @property
    def server_address(self) -> tuple[int, int]:
        return self._server_address

    def config_file(self) -> Path:
        sections = {k: dict(v) for k, v in self.config.items()}
        sections.setdefault("metrics", {}).setdefault("port", self.metrics_port)
        if self.endpoints:
            sections.setdefault("endpoints", {}).setdefault("directories", self.endpoints)
        unit, client = self.server_address
        return write_config(self.workdir / "sbusr.conf", self.bus.port, sections, unit=unit, client=client)

    def start(self) -> Stack:
        try:
            if self._own_bus:
                self.bus.start()
            self.start_server()
            self.ipsc = FakeIpsc(self.bus.host, self.bus.port, unit=self.ipsc_unit, process=self.ipsc_process,
                                 server=self.server_address).start()
        except BaseException:
            self.stop()
            raise
        return self

    def start_server(self) -> ServerProcess:
        """Start (or start again, e.g. after :meth:`kill_server`) sbusr-server with the config."""
        self.server = ServerProcess(self.config_file()).start()
        return self.server

    def stop_server(self) -> int | None:
        server, self.server = self.server, None
        return server.stop() if server is not None else None

    def kill_server(self) -> None:
        """SIGKILL sbusr-server (its worker and spooler processes end with it), as a crash would."""
        if self.server is not None and self.server.proc is not None:
            self.server.proc.kill()
            self.server.proc.wait(30)
        self.server = None

    def start_api(self, **api_options: Any) -> ApiProcess:
        """sbusr-api on a free port, talking to this bus; ``api.start_flow(...)`` starts flows.

        Returns once the API lists the IPSC stand-in: a newcomer learns of the clients already on the
        bus only from their replies to its arrival, which may come after the API says it is ready.
        """
        client_id = self.identities.api_client() if self.identities is not None else len(self._apis) + 10
        api = ApiProcess(self.workdir, self.bus.port, client_id=client_id, api=api_options or None,
                         server=self.server_address)
        self._apis.append(api)
        api.start()
        if self.ipsc is not None:
            token = str(api_options.get("auth_token", ""))
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            wanted = {"unit": self.ipsc_unit, "client": self.ipsc_process}
            wait_for(lambda: _lists(api, headers, wanted), f"sbusr-api to list the IPSC stand-in {wanted}",
                     API_SEES_IPSC_TIMEOUT, interval=0.05)
        return api

    def stop(self) -> None:
        for api in self._apis:
            api.close()
        self._apis.clear()
        if self.ipsc is not None:
            self.ipsc.stop()
            self.ipsc = None
        self.stop_server()
        if self._own_bus:
            self.bus.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _lists(api: ApiProcess, headers: dict[str, str], ipsc: dict[str, int]) -> bool:
    """Whether ``GET /api/ipsc`` names ``ipsc`` (any answer but a 200 listing it is a no)."""
    response = api.try_request("GET", "/api/ipsc", headers=headers)
    if response is None or response.status != 200:
        return False
    listed = response.json().get("ipsc", [])
    return any(isinstance(p, dict) and p.get("unit") == ipsc["unit"] and p.get("client") == ipsc["client"]
               for p in listed)
