"""Start-up shared by the console scripts: configuration, logging, transport URL."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log

import sbusr
from sbusr import opts


def prepare(argv: Sequence[str] | None, prog: str, conf: cfg.ConfigOpts | None = None) -> cfg.ConfigOpts:
    """Parse ``--config-file/--config-dir/--debug/--version`` and set up oslo.log."""
    conf = conf if conf is not None else cfg.ConfigOpts()
    log.register_options(conf)
    opts.register_opts(conf)
    try:
        conf(list(argv) if argv is not None else None, project="sbusr", prog=prog,
             version=sbusr.__version__, default_config_files=[])
        _validate(conf)
    except cfg.Error as exc:
        # oslo.config reports bad values lazily, on first use: surface them here, as one line
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.setup(conf, "sbusr")
    logging.captureWarnings(True)
    return conf


def _validate(conf: cfg.ConfigOpts) -> None:
    """Read every sbusr option once so that a bad value fails start-up, not a running call."""
    for group, group_opts in opts.list_opts():
        section = conf if group == "DEFAULT" else conf[group]
        for opt in group_opts:
            getattr(section, opt.dest)


def finish(conf: cfg.ConfigOpts, code: int) -> int:
    """Return the exit code; with the vendor backend, leave the process at once instead.

    libbusnetcli.so keeps its own threads running until the process dies and aborts
    (SIGABRT) in its static destructors on a normal interpreter exit, so after our
    orderly shutdown we flush the logs and skip those destructors.
    """
    if conf.smartbus.backend == "vendor":
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
