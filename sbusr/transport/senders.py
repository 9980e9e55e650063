"""What an oslo.messaging ``RPCClient`` on a smartbus transport can call: one sender per topic.

* ``ipsc``  -- ``call(ctxt, "start_flow", project=, flow=, params=[], unit=None, client=None,
  wait=False, ack_timeout=, result_timeout=)`` starts a flow on an IPSC (a random one unless
  unit/client say which) and answers ``{"unit", "client", "invoke_id", "ack", "message"}`` plus
  ``"result"`` when waiting; the answer carries ``ack_seconds`` when not waiting for the result
  (the IPSC's ack time);
* ``bus``   -- ``call(ctxt, "peers")`` / ``call(ctxt, "status")`` answer locally;
* anything else with ``server="unit:client"`` -- a JSON-RPC call to another sbusr-server over the
  bus (used by the HTTP API's /sys/reset).

Each sender maps an oslo message onto a :class:`~sbusr.transport.connection.BusConnection` call.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from typing import Any

import oslo_messaging

from sbusr.jsonrpc.encoding import dumps, loads_or_text
from sbusr.jsonrpc.errors import INTERNAL_ERROR
from sbusr.jsonrpc.protocol import full_method, params_from_args
from sbusr.smartbus.interface import BusError
from sbusr.transport.connection import BusConnection, ReplyTimeout

#: a sender gets the connection lazily: a malformed call fails without waiting for a registration
Connect = Callable[[], BusConnection]
Sender = Callable[[Connect, oslo_messaging.Target, dict[str, Any], bool, "float | None"], Any]


class RemoteError(BusError):
    """A JSON-RPC error object returned by another sbusr process."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}", code=code)
        self.rpc_message = message
        self.data = data


def parse_address(server: str | None) -> tuple[int, int]:
    """``"unit:client"`` -> (unit, client); the form used in ``Target.server``."""
    try:
        unit, client = (int(part) for part in str(server).split(":"))
    except ValueError:
        raise BusError(f"target server must be 'unit:client', got {server!r}") from None
    return unit, client


def bus_query(conn: Connect, target: oslo_messaging.Target, message: dict[str, Any], wait: bool,
              timeout: float | None) -> Any:
    """Topic ``bus``: ``peers`` or ``status``, answered from this process's connection."""
    method = message.get("method")
    if method == "peers":
        return [peer.as_dict() for peer in conn().peers()]
    if method == "status":
        return conn().status()
    raise BusError(f"unknown bus query {method!r}")


def start_flow(conn: Connect, target: oslo_messaging.Target, message: dict[str, Any], wait: bool,
               timeout: float | None) -> dict[str, Any]:
    """Topic ``ipsc``: ``start_flow``."""
    args = message.get("args") or {}
    wait_result = bool(args.get("wait"))
    ack_timeout = float(args.get("ack_timeout") or timeout or 15.0)
    sent = time.monotonic()
    started = conn().start_flow(
        str(args["project"]), str(args["flow"]), list(args.get("params") or []), unit=args.get("unit"),
        client=args.get("client"), wait=wait_result, ack_timeout=ack_timeout,
        result_timeout=float(args.get("result_timeout") or ack_timeout))
    answer = dataclasses.asdict(started)
    if not wait_result:
        answer["ack_seconds"] = round(time.monotonic() - sent, 6)
        del answer["result"]
    return answer


def call_sbusr(conn: Connect, target: oslo_messaging.Target, message: dict[str, Any], wait: bool,
               timeout: float | None) -> Any:
    """Any other topic: a JSON-RPC call to the sbusr-server at ``target.server`` ("unit:client")."""
    unit, client = parse_address(target.server)
    name = full_method(target.namespace, message["method"])
    params = params_from_args(message.get("args") or {})
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": name, "params": params}
    if not wait:
        conn().send_request(unit, client, dumps(request))
        return None
    request["id"] = uuid.uuid4().hex
    try:
        raw = conn().call(unit, client, request["id"], dumps(request), timeout)
    except ReplyTimeout:
        raise oslo_messaging.MessagingTimeout(
            f"no reply from sbusr {unit}:{client} to {name} within {timeout} s") from None
    response = loads_or_text(raw)
    if isinstance(response, dict) and "error" in response:
        error = response["error"] or {}
        raise RemoteError(error.get("code", INTERNAL_ERROR), str(error.get("message", "")),
                          error.get("data"))
    if not isinstance(response, dict) or "result" not in response:
        raise RemoteError(INTERNAL_ERROR, f"malformed reply: {raw[:200]!r}")
    return response["result"]


#: topic -> its sender; any other topic is a JSON-RPC call to the sbusr-server ``target.server``
SENDERS: dict[str | None, Sender] = {"bus": bus_query, "ipsc": start_flow}


def sender_for(topic: str | None) -> Sender:
    return SENDERS.get(topic, call_sbusr)
