"""sbusr's side of a SmartBus link: one connection per identity, the exchange of one request and its
replies, the peers it sees, flow starts, calls to other servers and the smartbus:// URL. Below the
oslo.messaging driver (and the process-mode master, which needs no oslo transport), above the bus
clients."""
