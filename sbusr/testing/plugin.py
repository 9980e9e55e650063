"""sbusr's pytest plugin (registered through the ``pytest11`` entry point: installing sbusr is enough).

Fixtures:

* ``sbusr_stack`` -- a factory: ``sbusr_stack(endpoints=[folder], config={...})`` starts a real
  development bus, sbusr-server and IPSC stand-in (:class:`sbusr.testing.stack.Stack`); everything
  it started is stopped after the test;
* ``sbusr`` -- one stack built from the test's ``@pytest.mark.sbusr(endpoints=..., config=...)``;
* ``sbusr_bus`` / ``sbusr_identities`` -- one development bus for the whole test session (per
  pytest-xdist worker) and the allocator of its addresses: ``Stack(..., bus=sbusr_bus,
  identities=sbusr_identities)`` or ``sbusr_stack(shared_bus=True)`` runs a stack on it.

Kept light: nothing of sbusr is imported until a fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sbusr(endpoints=None, config=None): what the sbusr fixture starts")


@pytest.fixture(scope="session")
def sbusr_bus() -> Iterator[Any]:
    """One development bus for the session (for the pytest-xdist worker): addresses on it come from
    ``sbusr_identities``."""
    from sbusr.testing.processes import BusProcess

    with BusProcess() as bus:
        yield bus


@pytest.fixture(scope="session")
def sbusr_identities() -> Any:
    """The allocator of addresses on ``sbusr_bus``."""
    from sbusr.testing.identities import Identities

    return Identities()


@pytest.fixture
def sbusr_stack(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    from sbusr.testing.stack import Stack

    started: list[Stack] = []

    def start(endpoints: list[Any] | None = None, config: dict[str, dict[str, Any]] | None = None,
              shared_bus: bool = False, **options: Any) -> Stack:
        """``shared_bus``: run on the session's bus (``sbusr_bus``) instead of a bus of its own."""
        options.setdefault("workdir", tmp_path_factory.mktemp("sbusr"))
        if shared_bus:
            options.update(bus=request.getfixturevalue("sbusr_bus"),
                           identities=request.getfixturevalue("sbusr_identities"))
        stack = Stack(endpoints, config, **options)
        started.append(stack)
        return stack.start()

    yield start
    for stack in reversed(started):
        stack.stop()


@pytest.fixture
def sbusr(request: pytest.FixtureRequest, sbusr_stack: Callable[..., Any]) -> Any:
    marker = request.node.get_closest_marker("sbusr")
    kwargs = dict(marker.kwargs) if marker is not None else {}
    return sbusr_stack(**kwargs)
