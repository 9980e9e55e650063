"""JSON-RPC 2.0 for sbusr: error codes and exceptions (:mod:`.errors`), requests, responses and their
oslo.messaging mapping (:mod:`.protocol`), and the JSON replies are written in (:mod:`.encoding`).
Nothing here touches the bus or knows the endpoint adapters."""
