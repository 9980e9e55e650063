"""Process mode's master: the relay (:mod:`~sbusr.execution.master.relay`, its :class:`Master`),
the worker processes (:mod:`~sbusr.execution.master.workers`), their generations
(:mod:`~sbusr.execution.master.generations`) and the ``sys.*`` calls it answers itself
(:mod:`~sbusr.execution.master.system_calls`)."""
