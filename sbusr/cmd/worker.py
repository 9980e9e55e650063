"""``python -m sbusr.cmd.worker``: one process-mode worker, started by sbusr-server's master.

Not for operators: the master passes ``--link-fd`` (its socketpair end) followed by its own
command-line options, so the worker reads the same configuration files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sbusr import opts
from sbusr.cmd import common


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sbusr-worker", add_help=False)
    parser.add_argument("--link-fd", type=int, required=True)
    ours, rest = parser.parse_known_args(list(argv) if argv is not None else sys.argv[1:])
    conf = common.prepare(rest, "sbusr-worker")
    from sbusr.execution.worker import serve

    return serve.serve(conf, ours.link_fd, opts.transport_url(conf))


if __name__ == "__main__":
    sys.exit(main())
