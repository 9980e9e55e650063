"""Wire codec: captured vendor bytes decode, every message round-trips, garbage only raises CodecError."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbusr.smartbus import codec as c
from sbusr.smartbus import flow_messages as fm

A = c.Address
CLIENT = A(20, 0, 19)
IPSC = A(0, 0, 2)

# Captures from docs/smartbus-protocol.md
REGISTER_ACK = bytes.fromhex("155b02000100001314000000180000000400000000000000")
FLOW_ACK_OK = bytes.fromhex(
    "155b0d01020000131400000047000000330000000d"
    + b"Project1".hex()
    + "00" * 24
    + "01000000070000000100000001000000"
    "0000"
)
FLOW_RET = bytes.fromhex(
    "155b0c010200001314000000"
    "4a00000036000000"
    "0c" + b"Project1".hex() + "00" * 24 + "01000000"
    "07000000"
    "09000000" + b'["ok",1]'.hex() + "00"
)
RPC_REQUEST = (
    bytes.fromhex("155b01d3131400ff1301ffff3c00000028000000") + b'{"jsonrpc":"2.0","id":1,"method":"echo"}'
)


def test_captured_register_ack():
    pkt = c.decode_packet(REGISTER_ACK)
    assert (pkt.cmd, pkt.cmdtype, pkt.src.unit) == (c.CMD_REGISTER_ACK, 0, 0)
    assert c.decode_register_ack(pkt.body) == 0


def test_captured_flow_ack_and_result():
    ack = fm.decode_flow_ack(c.decode_packet(FLOW_ACK_OK).body)
    assert (ack.project, ack.invoke_id, ack.ack, ack.msg, ack.invoker_ch) == ("Project1", 1, 1, b"", 7)
    pkt = c.decode_packet(FLOW_RET)
    assert pkt.header.packet_size == 74 and pkt.header.datalen == 54
    ret = fm.decode_flow_result(pkt.body)
    assert (ret.invoke_id, ret.param) == (1, b'["ok",1]')


def test_captured_rpc_request_header():
    pkt = c.decode_packet(RPC_REQUEST)
    assert (pkt.cmd, pkt.cmdtype) == (1, c.CMDTYPE_RPC)
    assert pkt.src == A(20, 0, 19) and pkt.dst == A(19, 1, -1)
    assert pkt.body.startswith(b'{"jsonrpc"')


def test_encodings_match_captured_sizes_and_headers():
    notify = c.encode_notify(
        CLIENT, IPSC, c.Notify("Project1", "Title1", "notify-param 中文".encode("gbk"), 1, 0, 5000)
    )
    assert notify[:12] == bytes.fromhex("155b0f011314000200000000")
    assert struct.unpack_from("<i", notify, 16)[0] == 167
    flow = fm.encode_call_flow(
        CLIENT, IPSC, fm.CallFlow("Project1", "Flow1", '[1,"abc","中文"]'.encode("gbk"), 1)
    )
    assert struct.unpack_from("<i", flow, 16)[0] == 130
    assert flow[20 + 112 : 20 + 112 + 18] == b'[1,"abc","\xd6\xd0\xce\xc4"]\0\0'
    reg = c.encode_register(CLIENT, c.Register(0, c.VENDOR_VERSION, "usr", "pwd", 3938, "hello-ext"))
    assert len(reg) == 6053 and reg[:20] == bytes.fromhex("155b01001314000000000000a517000091170000")
    assert reg[497:507] == bytes.fromhex("010114000000ffffffff")
    gc = c.encode_global_connect(CLIENT, A(19, 1, 2), c.GlobalConnect(20, 0, 19, 0, 1, "A-info"))
    assert gc[:20] == bytes.fromhex("155b090113140002130100002d01000019010000")
    assert gc[40:45] == bytes.fromhex("1400130001") and gc[45:52] == b"A-info\0"


def test_vendor_padding_is_tolerated():
    raw = c.encode_data(CLIENT, IPSC, 1, 3, b"abc")
    padded = bytearray(raw + b"\xee")
    struct.pack_into("<i", padded, 12, 24)
    pkt = c.decode_packet(bytes(padded))
    assert pkt.body == b"abc"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x00\x00" + b[2:], "head flag"),
        (lambda b: b[:12] + struct.pack("<i", 8) + b[16:], "smaller than the header"),
        (lambda b: b[:12] + struct.pack("<i", -5) + b[16:], "smaller than the header"),
        (lambda b: b[:12] + struct.pack("<i", 2**31 - 1) + b[16:], "exceeds the limit"),
        (lambda b: b[:16] + struct.pack("<i", -1) + b[20:], "datalen"),
        (lambda b: b[:16] + struct.pack("<i", 99) + b[20:], "datalen"),
        (lambda b: b[:-1], "bytes given"),
    ],
)
def test_bad_packets_raise_codec_error(mutate, message):
    raw = c.encode_data(CLIENT, IPSC, 1, 3, b"payload")
    with pytest.raises(c.CodecError, match=message):
        c.decode_packet(mutate(raw))


def test_truncated_bodies_and_bad_values():
    with pytest.raises(c.CodecError):
        fm.decode_flow_ack(b"\x0d" * 50)
    with pytest.raises(c.CodecError):
        c.decode_global_connect(b"\0" * 280)
    with pytest.raises(c.CodecError, match="at most 31"):
        fm.encode_call_flow(CLIENT, IPSC, fm.CallFlow("P" * 32, "F", b"[]", 1))
    with pytest.raises(c.CodecError, match="NUL"):
        c.encode_notify(CLIENT, IPSC, c.Notify("P", "T", b"a\0b"))
    with pytest.raises(c.CodecError, match="signed byte"):
        c.encode_data(A(200, 0, 1), IPSC, 1, 3, b"")
    with pytest.raises(c.CodecError, match="cmdtype 0"):
        c.encode_data(CLIENT, IPSC, 1, 0, b"")


def test_frame_decoder_splits_and_joins():
    packets = [c.encode_data(CLIENT, IPSC, i, 3, bytes([i]) * i) for i in range(1, 6)]
    stream = b"".join(packets)
    dec = c.FrameDecoder()
    got = []
    for i in range(0, len(stream), 7):
        got += dec.feed(stream[i : i + 7])
    assert [raw for _, raw in got] == packets
    assert dec.buffered == 0


def test_frame_decoder_rejects_oversized_before_buffering():
    dec = c.FrameDecoder(max_packet_size=1024)
    raw = c.encode_data(CLIENT, IPSC, 1, 3, b"x" * 2000)
    with pytest.raises(c.CodecError, match="exceeds"):
        dec.feed(raw[:20])


text = st.text(alphabet=st.characters(codec="gbk", exclude_characters="\0"), max_size=10)
payload = st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"\1"))
addr = st.builds(A, st.integers(-128, 127), st.integers(-128, 127), st.integers(-128, 127))


@given(addr, addr, text, text, payload, st.integers(-(2**31), 2**31 - 1), st.integers(0, 255))
def test_roundtrip_messages(src, dst, project, title, data, number, mode):
    n = c.decode_notify(
        c.decode_packet(c.encode_notify(src, dst, c.Notify(project, title, data, number, mode, 7))).body
    )
    assert (n.project, n.title, n.param, n.invoke_id, n.mode, n.expires) == (
        project,
        title,
        data,
        number,
        mode,
        7,
    )
    f = fm.decode_call_flow(
        c.decode_packet(fm.encode_call_flow(src, dst, fm.CallFlow(project, title, data, number))).body
    )
    assert (f.project, f.flow, f.params, f.invoke_id) == (project, title, data, number)
    a = fm.decode_flow_ack(
        c.decode_packet(fm.encode_flow_ack(src, dst, fm.FlowAck(project, number, -3, data))).body
    )
    assert (a.invoke_id, a.ack, a.msg) == (number, -3, data)
    r = fm.decode_flow_result(
        c.decode_packet(fm.encode_flow_result(src, dst, fm.FlowResult(project, number, data))).body
    )
    assert r.param == data
    pkt = c.decode_packet(c.encode_data(src, dst, mode, 3, data))
    assert (pkt.src, pkt.dst, pkt.cmd, pkt.body) == (src, dst, mode, data)


@given(st.integers(-128, 127), st.integers(-128, 127), st.integers(-128, 127), st.integers(0, 2), text)
def test_roundtrip_global_connect_and_register(unit, client, ctype, status, info):
    ev = c.GlobalConnect(unit, client, ctype, 0, status, info)
    assert (
        c.decode_global_connect(c.decode_packet(c.encode_global_connect(A(1, 1, 1), A(2, 2, 2), ev)).body)
        == ev
    )
    reg = c.Register(1, c.VENDOR_VERSION, info, info, 42, info)
    assert c.decode_register(c.decode_packet(c.encode_register(A(unit, client, ctype), reg)).body) == reg


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_codec_error(data):
    decoders = [
        c.decode_register,
        c.decode_register_ack,
        c.decode_heartbeat,
        c.decode_global_connect,
        c.decode_notify,
        fm.decode_call_flow,
        fm.decode_flow_ack,
        fm.decode_flow_result,
    ]
    for fn in (c.decode_packet, *decoders):
        try:
            fn(data)
        except c.CodecError:
            pass
    try:
        c.FrameDecoder(max_packet_size=4096).feed(data)
    except c.CodecError:
        pass


@given(st.binary(min_size=0, max_size=64))
def test_random_bodies_behind_valid_headers(body):
    raw = c.encode_packet(c.CMD_CALL_FLOW_ACK, 1, CLIENT, IPSC, body)
    for fn in (fm.decode_flow_ack, fm.decode_flow_result, c.decode_notify, fm.decode_call_flow):
        try:
            fn(c.decode_packet(raw).body)
        except c.CodecError:
            pass
