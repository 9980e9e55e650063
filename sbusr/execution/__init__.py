"""Where endpoint methods run: ``[execution] mode`` = thread or process.

* :mod:`~sbusr.execution.limits` -- ``@limits(timeout=...)`` for endpoint code;
* :mod:`~sbusr.execution.threads` -- thread mode: the RPCServer's threads plus a watchdog;
* :mod:`~sbusr.execution.master` -- process mode's master: owns the bus link, relays packets to
  workers, supervises them, answers the ``sys.*`` calls whose state it keeps
  (:mod:`~sbusr.execution.events` are its hooks);
* :mod:`~sbusr.execution.worker` -- a process-mode worker: a standard RPCServer over its link to the
  master (:mod:`~sbusr.execution.worker.link`), speaking :mod:`~sbusr.execution.messages`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from oslo_config import cfg

    from sbusr.execution.threads import ThreadExecutor

__all__ = ["create_executor"]


def create_executor(conf: cfg.ConfigOpts) -> ThreadExecutor:
    """The in-process (thread-mode) executor for ``conf.execution``, not started; what runs
    endpoints in one process without a server (``sbusr.testing``). Process mode's executor is the
    master (:class:`sbusr.execution.master.relay.Master`), which ``sbusr-server`` creates itself."""
    from sbusr.execution.threads import ThreadExecutor

    group = conf.execution
    return ThreadExecutor(group.workers, group.call_timeout, group.worker_init)
