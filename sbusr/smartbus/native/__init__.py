"""sbusr's own SmartBus client: the asyncio protocol (:mod:`.client`) and its thread-safe wrapper
(:mod:`.threaded`)."""
