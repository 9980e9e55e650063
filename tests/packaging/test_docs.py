"""The documents name only files that exist: every ``sbusr/...`` and ``docs/...`` path in README.md and
docs/*.md, and every ``docs/...`` document a module of sbusr cites, so a move or a rename that forgets
the prose fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: a repository path: not part of a longer one (``/opt/sbusr/venv``, ``share/sbusr/...``)
PATH = re.compile(r"(?<![\w./-])((?:sbusr|docs)/[\w./-]*[\w/])")


def named_paths(text: str) -> set[str]:
    """The ``sbusr/...`` and ``docs/...`` paths ``text`` names (a trailing full stop is prose)."""
    return {match.rstrip(".") for match in PATH.findall(text)}


def test_the_path_pattern_finds_repository_paths_only():
    text = ("see `sbusr/transport/`, sbusr/smartbus/codec.py. and [the page](docs/architecture.md); "
            "not /opt/sbusr/venv/bin or share/sbusr/sbusr.conf")
    assert named_paths(text) == {"sbusr/transport/", "sbusr/smartbus/codec.py", "docs/architecture.md"}


def test_readme_and_docs_name_only_paths_that_exist():
    missing = {}
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        gone = sorted(p for p in named_paths(document.read_text(encoding="utf-8")) if not (ROOT / p).exists())
        if gone:
            missing[document.relative_to(ROOT).as_posix()] = gone
    assert missing == {}


def test_documents_the_modules_cite_exist():
    missing = {}
    for module in sorted((ROOT / "sbusr").rglob("*.py")):
        gone = sorted(p for p in named_paths(module.read_text(encoding="utf-8"))
                      if p.startswith("docs/") and not (ROOT / p).exists())
        if gone:
            missing[module.relative_to(ROOT).as_posix()] = gone
    assert missing == {}
