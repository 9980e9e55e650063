"""The master <-> worker messages of process mode, as named types on the worker's link.

A worker's link is a stream socket carrying SmartBus frames (:mod:`sbusr.smartbus.codec`): request
packets from the bus go to the worker unchanged, and the replies come back as the NOTIFY frames the
bus expects. Control messages travel on the same stream as frames of their own kind: cmdtype 0
(SmartBus link packets, which never leave a link) with a cmd of :data:`CONTROL_CMDS`. The frequent
ones (:class:`Started`, :class:`Done`) are packed with ``struct``; the rare ones carry JSON.

Request packets are not numbered on the wire: master and worker both count them in stream order,
so the n-th data packet sent to a worker is ``seq`` n in that worker's messages.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from sbusr.smartbus import codec

#: cmd values (with cmdtype 0) of control frames
READY, STARTED, DONE, EXIT, FAILED = 101, 102, 103, 106, 109
CONTROL_CMDS = frozenset({READY, STARTED, DONE, EXIT, FAILED})
#: outcome code of a call that returned a result (any other value is its JSON-RPC error code)
RESULT = 0

_NOWHERE = codec.Address(0, 0, 0)
_STARTED = struct.Struct("<Id")
_DONE = struct.Struct("<IIH")
_OUTCOME = struct.Struct("<iHH")
_TEXT_MAX = 200  # outcome texts are for logs and metrics labels, not for callers


class MessageError(ValueError):
    """A control frame that does not decode (a bug or a broken worker: the link is dropped)."""


@dataclass(frozen=True, slots=True)
class Ready:
    """Worker -> master, once: it has loaded its endpoints and serves."""

    pid: int
    init_error: str | None = None
    methods: list[str] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Failed:
    """Worker -> master, instead of :class:`Ready`: it cannot serve (its worker_init raised, or its
    start-up did); ``cause`` is one line naming the function and its exception, ``detail`` the
    traceback. The worker exits right after."""

    pid: int
    cause: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Started:
    """Worker -> master: a call of packet ``seq`` started with a limit the master did not assume.

    Sent when the call's limit differs from ``[execution] call_timeout`` (which the master arms
    when it hands the packet over) and for every call of a batch; ``timeout`` 0 = no limit.
    """

    seq: int
    timeout: float
    method: str = ""
    request_id: Any = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one call ended: ``code`` :data:`RESULT` or a JSON-RPC error code."""

    method: str
    code: int = RESULT
    message: str = ""


@dataclass(frozen=True, slots=True)
class Done:
    """Worker -> master: packet ``seq`` is fully handled; ``reply`` is its NOTIFY frame (b"" if none).

    The reply travels inside this message so that "answered" and "done" are one event: a worker
    that dies before the whole frame is written has answered nothing, and the master answers for it.
    """

    seq: int
    outcomes: tuple[Outcome, ...]  # one per answered call (a notification is not answered)
    reply: bytes = b""


@dataclass(frozen=True, slots=True)
class Exit:
    """Master -> worker: finish the calls you hold, then exit (retired, recycled or shutting down)."""


Message = Ready | Failed | Started | Done | Exit


def _frame(cmd: int, body: bytes) -> bytes:
    return codec.encode_packet(cmd, codec.CMDTYPE_INTERNAL, _NOWHERE, _NOWHERE, body)


def _text(value: str) -> bytes:
    raw = value.encode("utf-8", errors="replace")
    return raw[:_TEXT_MAX]


def encode(msg: Message) -> bytes:
    """The control frame for ``msg``."""
    if isinstance(msg, Done):
        parts = [_DONE.pack(msg.seq, len(msg.reply), len(msg.outcomes)), msg.reply]
        for outcome in msg.outcomes:
            method, text = _text(outcome.method), _text(outcome.message)
            parts += [_OUTCOME.pack(outcome.code, len(method), len(text)), method, text]
        return _frame(DONE, b"".join(parts))
    if isinstance(msg, Started):
        extra = json.dumps([msg.method, msg.request_id], default=str).encode()
        return _frame(STARTED, _STARTED.pack(msg.seq, msg.timeout) + extra)
    if isinstance(msg, Ready):
        return _frame(READY, json.dumps({"pid": msg.pid, "init_error": msg.init_error,
                                         "methods": msg.methods, "duplicates": msg.duplicates}).encode())
    if isinstance(msg, Failed):
        return _frame(FAILED, json.dumps({"pid": msg.pid, "cause": msg.cause, "detail": msg.detail}).encode())
    if isinstance(msg, Exit):
        return _frame(EXIT, b"")
    raise TypeError(f"not a control message: {msg!r}")


def is_control(fields: tuple[int, ...]) -> bool:
    """True when frame header fields (codec wire order) are those of a control frame."""
    cmd, cmdtype = codec.frame_command(fields)
    return cmdtype == codec.CMDTYPE_INTERNAL and cmd in CONTROL_CMDS


def decode_frame(raw: bytes, fields: tuple[int, ...]) -> Message:
    """The message of a control frame (``is_control`` true); MessageError if malformed."""
    return decode(codec.frame_command(fields)[0], codec.frame_body(raw, fields))


def decode(cmd: int, body: bytes) -> Message:
    """The message of a control frame's ``cmd`` and body; MessageError if malformed."""
    try:
        if cmd == DONE:
            seq, reply_len, count = _DONE.unpack_from(body)
            pos = _DONE.size
            reply = body[pos:pos + reply_len]
            pos += reply_len
            outcomes = []
            for _ in range(count):
                code, mlen, tlen = _OUTCOME.unpack_from(body, pos)
                pos += _OUTCOME.size
                method = body[pos:pos + mlen].decode("utf-8", errors="replace")
                pos += mlen
                text = body[pos:pos + tlen].decode("utf-8", errors="replace")
                pos += tlen
                outcomes.append(Outcome(method, code, text))
            if len(reply) != reply_len or pos > len(body):
                raise MessageError("truncated DONE")
            return Done(seq, tuple(outcomes), reply)
        if cmd == STARTED:
            seq, timeout = _STARTED.unpack_from(body)
            method, request_id = json.loads(body[_STARTED.size:])
            return Started(seq, timeout, str(method), request_id)
        if cmd == EXIT:
            return Exit()
        data = json.loads(body)
        if cmd == READY:
            return Ready(int(data["pid"]), data.get("init_error"), list(data.get("methods") or []),
                         list(data.get("duplicates") or []))
        if cmd == FAILED:
            return Failed(int(data["pid"]), str(data["cause"]), str(data.get("detail") or ""))
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise MessageError(f"bad control frame {cmd}: {exc}") from None
    raise MessageError(f"unknown control frame {cmd}")
