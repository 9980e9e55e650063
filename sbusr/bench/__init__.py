"""The ``sbusr-bench`` benchmark: RPC calls/s and latency next to the raw SmartBus round trip."""

from sbusr.bench.cli import main

__all__ = ["main"]
