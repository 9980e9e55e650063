"""Timers and cron: ``@timer``/``@cron`` (:mod:`.schedule`) and when they are due (:mod:`.scheduler`).
Each tick runs through the built-in ``sbusr.timer.run`` method (:mod:`sbusr.endpoints.timer`)."""
