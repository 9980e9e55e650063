"""Unit tests: one piece of sbusr in the pytest process, no bus and no child process.

A test that needs a real bus, a server process or a socket to another process belongs in tests/e2e.
"""

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.unit)
