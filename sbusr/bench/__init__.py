"""The ``sbusr-bench`` benchmark (:mod:`.cli`): RPC calls/s and latency next to the raw SmartBus round
trip."""
