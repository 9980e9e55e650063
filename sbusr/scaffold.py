"""A new methods project (what ``sbusr-init DIR`` writes): an example endpoint, its tests written
with :mod:`sbusr.testing`, a config that serves it through a development bus of its own, a README.

Every file is plain text from this module (no template engine): small enough to read here, and the
project it makes is checked by running its tests and serving it (tests/test_init_project.py).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

#: the project's files, relative to its folder; ``{port}`` is the development bus's port
FILES: dict[str, str] = {
    "methods/greeting.py": '''\
"""Example methods: an IPSC flow calls them as JSON-RPC "greeting.hello" and "greeting.add".

Every file in this folder is loaded by sbusr-server ([endpoints] directories in sbusr.conf). A class
with an oslo.messaging ``target`` is an endpoint: its public methods answer "<namespace>.<method>".
"""

import oslo_messaging

from sbusr.decorators import RpcError, limits


class Greeting:
    """The methods under the namespace "greeting"."""

    target = oslo_messaging.Target(namespace="greeting")

    def hello(self, ctxt: dict, name: str) -> dict[str, str]:
        """Greet a caller by name: ``{"text": "Hello, <name>!"}``; an empty name is error 4001."""
        if not name.strip():
            raise RpcError(4001, "name must not be empty")
        return {"text": f"Hello, {name}!"}

    @limits(timeout=5)
    def add(self, ctxt: dict, a: int, b: int) -> int:
        """The sum of two integers (answered -32001 if it ever took more than 5 s)."""
        return a + b
''',
    "tests/test_greeting.py": '''\
"""Tests of methods/greeting.py: the same dispatch as sbusr-server, with no bus (fast), then once
through a real development bus and sbusr-server (the ``sbusr`` fixture of sbusr's pytest plugin)."""

from pathlib import Path

import pytest

from sbusr.testing import RpcError, call

METHODS = Path(__file__).resolve().parent.parent / "methods"


def test_hello():
    assert call(METHODS, "greeting.hello", ["Li Lei"]) == {"text": "Hello, Li Lei!"}


def test_hello_needs_a_name():
    with pytest.raises(RpcError) as error:
        call(METHODS, "greeting.hello", [" "])
    assert error.value.code == 4001


def test_add_takes_named_params():
    assert call(METHODS, "greeting.add", {"a": 2, "b": 3}) == 5


def test_unknown_params_are_refused():
    with pytest.raises(RpcError) as error:
        call(METHODS, "greeting.add", [1, 2, 3])
    assert error.value.code == -32602


@pytest.mark.sbusr(endpoints=[METHODS])
def test_hello_through_a_real_bus(sbusr):
    reply = sbusr.ipsc.call("greeting.hello", ["Li Lei"])
    assert reply["result"] == {"text": "Hello, Li Lei!"}
''',
    "sbusr.conf": '''\
# sbusr-server --config-file sbusr.conf
# Serves the methods in methods/ on a development SmartBus that this server starts itself.

[DEFAULT]
# the bus to register on: this server's own development bus (see embedded_bus) on port {port};
# unit 19, client 1 is the address IPSC flows (and sbusr-ipsc) send their requests to
transport_url = smartbus://127.0.0.1:{port}/?unit_id=19&client_id=1

[smartbus]
# start a development SmartBus in this process (no IPSC needed); remove it, and point
# transport_url at the real SmartBus, in production
embedded_bus = true

[endpoints]
# endpoint files, relative to this file
directories = methods
# reload the methods when a file in methods/ is saved (development only)
watch = true

[execution]
# thread: methods run in threads of one process; process: in worker processes (isolation,
# hard time limits)
mode = thread
call_timeout = 30

[metrics]
# no Prometheus listener while developing (9465 is the usual port)
port = 0
''',
    "pytest.ini": '''\
[pytest]
testpaths = tests
# deprecation notices of oslo.messaging's dependencies, not of your code
filterwarnings =
    ignore:\\s*Eventlet is deprecated
    ignore::DeprecationWarning:eventlet.*
    ignore::DeprecationWarning:oslo_service.*
    ignore::DeprecationWarning:oslo_utils.*
    ignore::DeprecationWarning:oslo_messaging.*
''',
    "README.md": '''\
# Methods for IPSC flows, served by sbusr

* `methods/greeting.py` -- the example endpoint: `greeting.hello(name)` and `greeting.add(a, b)`.
  Add methods to it, or add files next to it.
* `tests/test_greeting.py` -- its tests, written with `sbusr.testing`.
* `sbusr.conf` -- the configuration that serves `methods/` on a development bus on port {port}.

Run the tests:

```sh
pytest
```

Serve the methods (the server starts its own development SmartBus, so no IPSC is needed):

```sh
sbusr-server --config-file sbusr.conf
```

and call one from another terminal, as an IPSC flow would:

```sh
sbusr-ipsc call --port {port} greeting.hello "Li Lei"
```

In production, remove `embedded_bus` from `sbusr.conf` and point `transport_url` at the
SmartBus of your IPSC. sbusr's README has the rest: time limits, worker processes, timers, the
spooler, and testing through a real bus.
''',
}


class ProjectExists(Exception):
    """The folder already holds one of the project's files."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the development bus's, unless one is given)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def create_project(directory: str | os.PathLike[str], port: int | None = None) -> list[Path]:
    """Write the project into ``directory`` (created if missing); the files written.

    Raises :class:`ProjectExists` before writing anything if one of the files is there already.
    """
    root = Path(directory)
    port = free_port() if port is None else port
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    existing = [name for name in FILES if (root / name).exists()]
    if existing:
        raise ProjectExists(f"{root} already has {', '.join(existing)}; nothing written")
    written = []
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("{port}", str(port)), encoding="utf-8")
        written.append(path)
    return written
