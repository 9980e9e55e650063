"""Start-up shared by the console scripts: configuration and logging."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log

from sbusr import config

LOG = logging.getLogger("sbusr.config")
#: oslo.log's line for a record logged during a call: the JSON-RPC request id where ``[-]`` stands
#: otherwise (oslo's own default adds the user and project fields of a cloud API, always empty here)
LOG_CONTEXT_FORMAT = ("%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s [%(request_id)s] "
                      "%(instance)s%(message)s")


def prepare(argv: Sequence[str] | None, prog: str, conf: cfg.ConfigOpts | None = None,
            description: str | None = None) -> cfg.ConfigOpts:
    """Parse ``--config-file/--config-dir/--debug/--version``, check the configuration, set up oslo.log.

    Every unusable configuration ends here with one line on stderr and exit status 2: a value
    oslo.config refuses (checked now, not at first use), a transport other than smartbus://, no
    config file found. Unknown options in sbusr's sections are logged as warnings.
    """
    log.set_defaults(logging_context_format_string=LOG_CONTEXT_FORMAT)
    conf = conf if conf is not None else cfg.ConfigOpts()
    try:
        config.load(argv, prog, description=description, conf=conf)
        bad = config.problems(conf)
    except (cfg.Error, config.ConfigError) as exc:
        bad = [" ".join(str(exc).split())]
    if bad:
        for line in bad:
            print(f"{prog}: configuration error: {line}", file=sys.stderr)
        raise SystemExit(2)
    log.setup(conf, "sbusr")
    logging.captureWarnings(True)
    for warning in config.unknown_options(conf):
        LOG.warning("%s", warning)
    return conf


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
