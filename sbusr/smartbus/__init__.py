"""SmartBus: wire codec, development bus and client backends."""
