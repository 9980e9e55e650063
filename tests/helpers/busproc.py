"""The development bus as a test process (moved to :mod:`sbusr.testing.processes`)."""

from sbusr.testing.processes import BusProcess, die_with_parent, free_port

_die_with_parent = die_with_parent

__all__ = ["BusProcess", "_die_with_parent", "free_port"]
