"""Packaging tests: what a new user meets first (the README's commands as written, make's installs,
the wheel, the service files) and the shape of the source (layers import downward only)."""

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.packaging)
