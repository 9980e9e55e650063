"""The order test files start in under ``make test`` (pytest-xdist, one file per worker at a time).

A worker that takes a long file last keeps the run going alone after the others finished, so the
files that take longest start first; the rest follow end-to-end first, unit tests last, because
short files fill the gaps best at the end. ``make test`` passes ``--no-loadscope-reorder`` so that
xdist keeps this order instead of its own (most tests first). The list only orders; a file missing
from it or gone from the tree changes nothing but the balance.
"""

from __future__ import annotations

import pytest

#: the longest files under ``pytest --durations=0``, longest first
LONGEST_FIRST = (
    "tests/e2e/test_api.py",
    "tests/e2e/test_stop_start_load.py",
    "tests/e2e/test_mode_parity.py",
    "tests/e2e/test_execution.py",
    "tests/e2e/test_spooler.py",
    "tests/e2e/test_timers.py",
    "tests/packaging/test_readme.py",
    "tests/e2e/test_bench.py",
)
_LAYERS = ("e2e", "packaging", "unit")


def _file_rank(path: str, tests_in_file: int) -> tuple[int, int, int]:
    if path in LONGEST_FIRST:
        return (0, LONGEST_FIRST.index(path), 0)
    parts = path.split("/")
    layer = _LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in _LAYERS else len(_LAYERS)
    return (1 + layer, 0, -tests_in_file)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    counts: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        counts[path] = counts.get(path, 0) + 1
    order = {path: _file_rank(path, n) for path, n in counts.items()}
    items.sort(key=lambda item: order[item.nodeid.split("::", 1)[0]])  # stable: each file keeps its own order
