"""sbusr's pytest plugin (registered through the ``pytest11`` entry point: installing sbusr is enough).

Fixtures:

* ``sbusr_stack`` -- a factory: ``sbusr_stack(endpoints=[folder], config={...})`` starts a real
  development bus, sbusr-server and IPSC stand-in (:class:`sbusr.testing.stack.Stack`); everything
  it started is stopped after the test;
* ``sbusr`` -- one stack built from the test's ``@pytest.mark.sbusr(endpoints=..., config=...)``.

Kept light: nothing of sbusr is imported until a fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sbusr(endpoints=None, config=None): what the sbusr fixture starts")


@pytest.fixture
def sbusr_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    from sbusr.testing.stack import Stack

    started: list[Stack] = []

    def start(endpoints: list[Any] | None = None, config: dict[str, dict[str, Any]] | None = None,
              **options: Any) -> Stack:
        options.setdefault("workdir", tmp_path_factory.mktemp("sbusr"))
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
