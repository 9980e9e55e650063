"""The remote-flow bodies: CALL_FLOW, its ack and its result (bytes <-> typed messages).

A net client starts an IPSC flow with CALL_FLOW; IPSC answers with CALL_FLOW_ACK (started, or an
error code) and, when a result was asked for, CALL_FLOW_RET.  Layouts follow
``docs/smartbus-protocol.md``; every malformed input raises :class:`~sbusr.smartbus.codec.CodecError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sbusr.smartbus.codec import (
    CMD_CALL_FLOW,
    CMD_CALL_FLOW_ACK,
    CMD_CALL_FLOW_RET,
    CMDTYPE_SYSTEM,
    DEFAULT_ENCODING,
    MAX_FLOW_PARAMS,
    Address,
    CodecError,
    c_payload,
    c_string,
    encode_packet,
    fixed_text,
    need_bytes,
    text_of,
)

_CALL_FLOW_FIXED = struct.Struct("<B32s32sBiii34s")  # 112
_FLOW_ACK_FIXED = struct.Struct("<B32siiii")  # 49
_FLOW_RET_FIXED = struct.Struct("<B32siii")  # 45


@dataclass(frozen=True, slots=True)
class CallFlow:
    project: str
    flow: str
    params: bytes  # JSON array text by convention
    invoke_id: int
    mode: int = 0  # 0 = result expected, 1 = no result
    event_ch: int = -1


def encode_call_flow(src: Address, dst: Address, msg: CallFlow, encoding: str = DEFAULT_ENCODING) -> bytes:
    params = c_payload(msg.params, "flow params")
    if len(params) > MAX_FLOW_PARAMS:
        raise CodecError(f"flow params are {len(params)} bytes; at most {MAX_FLOW_PARAMS} fit")
    fixed = _CALL_FLOW_FIXED.pack(CMD_CALL_FLOW, fixed_text(msg.project, 32, encoding, "project"),
                                  fixed_text(msg.flow, 32, encoding, "flow"), msg.mode & 0xFF, msg.event_ch,
                                  msg.invoke_id, len(params), b"")
    return encode_packet(CMD_CALL_FLOW, CMDTYPE_SYSTEM, src, dst, fixed + params + b"\0\0")


def decode_call_flow(body: bytes, encoding: str = DEFAULT_ENCODING) -> CallFlow:
    need_bytes(body, _CALL_FLOW_FIXED.size, "CALL_FLOW")
    _, project, flow, mode, event_ch, invoke_id, _len, _tmp = _CALL_FLOW_FIXED.unpack_from(body)
    return CallFlow(text_of(project, encoding), text_of(flow, encoding),
                    c_string(body[_CALL_FLOW_FIXED.size:]), invoke_id, mode, event_ch)


@dataclass(frozen=True, slots=True)
class FlowAck:
    project: str
    invoke_id: int
    ack: int  # 1 = started, anything else = error code
    msg: bytes = b""
    invoker_ch: int = 0


def encode_flow_ack(src: Address, dst: Address, msg: FlowAck, encoding: str = DEFAULT_ENCODING) -> bytes:
    text = c_payload(msg.msg, "ack message")
    fixed = _FLOW_ACK_FIXED.pack(CMD_CALL_FLOW_ACK, fixed_text(msg.project, 32, encoding, "project"),
                                 msg.invoke_id, msg.invoker_ch, msg.ack, len(text) + 1)
    tail = text + b"\0"
    return encode_packet(CMD_CALL_FLOW_ACK, CMDTYPE_SYSTEM, src, dst, fixed + tail.ljust(2, b"\0"))


def decode_flow_ack(body: bytes, encoding: str = DEFAULT_ENCODING) -> FlowAck:
    need_bytes(body, _FLOW_ACK_FIXED.size + 2, "CALL_FLOW_ACK")  # the vendor library wants datalen > 50
    _, project, invoke_id, ch, ack, _len = _FLOW_ACK_FIXED.unpack_from(body)
    return FlowAck(text_of(project, encoding), invoke_id, ack, c_string(body[_FLOW_ACK_FIXED.size:]), ch)


@dataclass(frozen=True, slots=True)
class FlowResult:
    project: str
    invoke_id: int
    param: bytes  # JSON array text by convention
    invoker_ch: int = 0


def encode_flow_result(src: Address, dst: Address, msg: FlowResult,
                       encoding: str = DEFAULT_ENCODING) -> bytes:
    param = c_payload(msg.param, "flow result")
    fixed = _FLOW_RET_FIXED.pack(CMD_CALL_FLOW_RET, fixed_text(msg.project, 32, encoding, "project"),
                                 msg.invoke_id, msg.invoker_ch, len(param) + 1)
    tail = param + b"\0"
    return encode_packet(CMD_CALL_FLOW_RET, CMDTYPE_SYSTEM, src, dst, fixed + tail.ljust(2, b"\0"))


def decode_flow_result(body: bytes, encoding: str = DEFAULT_ENCODING) -> FlowResult:
    need_bytes(body, _FLOW_RET_FIXED.size + 2, "CALL_FLOW_RET")  # the vendor library wants datalen > 46
    _, project, invoke_id, ch, _len = _FLOW_RET_FIXED.unpack_from(body)
    return FlowResult(text_of(project, encoding), invoke_id, c_string(body[_FLOW_RET_FIXED.size:]), ch)
