"""``python -m sbusr.cmd.spooler``: one spooler process, started by sbusr-server (not by hand)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sbusr.cmd import common
from sbusr.spooler import runner


def main(argv: Sequence[str] | None = None) -> int:
    conf = common.prepare(argv if argv is not None else sys.argv[1:], "sbusr-spooler")
    return runner.main(conf)


if __name__ == "__main__":
    sys.exit(main())
