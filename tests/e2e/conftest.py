"""End-to-end tests: real processes (development bus, sbusr-server, sbusr-api, vendor clients) and
real sockets, as an operator runs them.

A test that only needs *a* bus uses the session's (``sbusr_bus``, one per pytest-xdist worker, from
sbusr's pytest plugin) and takes its addresses from ``sbusr_identities``; a module whose subject is
the bus itself, or that counts the peers on it, starts a bus of its own.
"""

from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def on_session_bus(sbusr_bus: Any, sbusr_identities: Any) -> dict[str, Any]:
    """``Stack(..., **on_session_bus)``: a stack on the session's bus, with addresses of its own."""
    return {"bus": sbusr_bus, "identities": sbusr_identities}
