"""sbusr-server as a test process (moved to :mod:`sbusr.testing.processes`)."""

from sbusr.testing.processes import SERVER_CLIENT, SERVER_UNIT, ServerProcess, write_config

__all__ = ["SERVER_CLIENT", "SERVER_UNIT", "ServerProcess", "write_config"]
