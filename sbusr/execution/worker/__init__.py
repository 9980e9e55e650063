"""A process-mode worker: a standard RPCServer (:mod:`~sbusr.execution.worker.serve`) over its link
to the master (:mod:`~sbusr.execution.worker.link`)."""
