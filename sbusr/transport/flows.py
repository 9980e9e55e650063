"""Starting a flow on an IPSC: the invocation, its acknowledgement and, when awaited, its result.

What an HTTP client or a method asks for when it "starts a flow"; the bus client only sends the
invocation and delivers the acknowledgement and result packets.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Any

from sbusr.jsonrpc.encoding import dumps, loads_or_text
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Address
from sbusr.smartbus.interface import BusClient, BusError, FlowTimeout
from sbusr.transport.peers import Peer


class FlowRejected(BusError):
    """The IPSC answered a flow start with an error ack."""

    def __init__(self, ack: int, message: str, source: Address | None) -> None:
        super().__init__(f"IPSC {source} refused the flow: ack {ack} {message}".strip(), code=ack)
        self.ack = ack
        self.ack_message = message
        self.source = source


@dataclass(slots=True)
class FlowStarted:
    """A flow an IPSC acknowledged (``ack`` 1) and, when it was awaited, the flow's result."""

    unit: int
    client: int
    invoke_id: int
    ack: int
    message: str
    result: Any = None  # the parsed result (its text when not JSON); only set with start_flow(wait=True)


def start_flow(client: BusClient, peer: Peer, project: str, flow: str, params: list[Any], *, wait: bool,
               ack_timeout: float, result_timeout: float) -> FlowStarted:
    """Start ``project``/``flow`` on the IPSC ``peer`` through ``client``.

    Returns once the IPSC acknowledged the flow or, with ``wait``, once the flow returned its
    result. Raises FlowRejected (error ack), FlowTimeout, BusError.
    """
    invocation = client.invoke_flow(peer.unit, peer.client, project, flow, dumps(list(params)),
                                    want_result=wait, ack_timeout=ack_timeout,
                                    result_timeout=result_timeout if wait else None)
    try:
        ack = invocation.ack.result(timeout=ack_timeout + 1.0)
    except (FlowTimeout, concurrent.futures.TimeoutError):
        if invocation.result is not None:
            invocation.result.cancel()
        raise FlowTimeout(f"IPSC {peer.unit}/{peer.client} did not acknowledge the flow within "
                          f"{ack_timeout:g} s", codec.ERR_TIMEOUT) from None
    if ack.ack != codec.FLOW_ACK_OK:
        raise FlowRejected(ack.ack, ack.message, ack.source)
    started = FlowStarted(peer.unit, peer.client, invocation.invoke_id, ack.ack, ack.message)
    if wait and invocation.result is not None:
        try:
            raw = invocation.result.result(timeout=result_timeout + 1.0)
        except (FlowTimeout, concurrent.futures.TimeoutError):
            raise FlowTimeout(f"flow {project}/{flow} returned no result within {result_timeout:g} s",
                              codec.ERR_TIMEOUT) from None
        started.result = loads_or_text(raw)
    return started
