"""sbusr-api as a test process (moved to :mod:`sbusr.testing.api`)."""

from sbusr.testing.api import API_UNIT, ApiProcess, Response

__all__ = ["API_UNIT", "ApiProcess", "Response"]
