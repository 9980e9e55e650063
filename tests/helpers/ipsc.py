"""The IPSC stand-in (moved to :mod:`sbusr.testing.ipsc`)."""

from sbusr.testing.ipsc import Behaviour, FakeIpsc, ReceivedCall

__all__ = ["Behaviour", "FakeIpsc", "ReceivedCall"]
