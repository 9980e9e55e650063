"""``sbusr-init DIR``: start a methods project (an example endpoint, its tests, a config, a README).

A developer tool run once, so plain argparse; the project itself is :mod:`sbusr.scaffold`'s.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sbusr import scaffold


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbusr-init", description="Create a methods project: an example endpoint, its tests, a config "
                                       "that serves it on a development bus, and a README.")
    parser.add_argument("directory", metavar="DIR", help="the project folder (created if missing)")
    parser.add_argument("--port", type=int, default=None,
                        help="port of the development bus in the config (default: a port free now)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = scaffold.create_project(args.directory, args.port)
    except (scaffold.ProjectExists, ValueError, OSError) as exc:
        print(f"sbusr-init: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"created {path}")
    print(f"\nnext: cd {args.directory} && pytest && sbusr-server --config-file sbusr.conf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
