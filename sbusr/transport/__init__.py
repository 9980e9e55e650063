"""sbusr's side of a SmartBus link: one connection per identity, the exchange of one request and its
replies, the peers it sees. Below the oslo.messaging driver, above the bus clients."""
