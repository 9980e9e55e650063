"""The spooler: durable background jobs for endpoint code (uWSGI's ``@spool``).

* :mod:`sbusr.spooler.jobs` -- ``@spool``, ``SpoolRetry`` and the job directory (no bus, no server);
* :mod:`sbusr.spooler.runner` -- the loop of a spooler process (``python -m sbusr.cmd.spooler``);
* :mod:`sbusr.spooler.supervisor` -- started by sbusr-server: owns the directory, runs the spooler
  processes, enforces the time limit.
"""
