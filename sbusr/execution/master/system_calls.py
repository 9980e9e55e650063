"""``sys.stats``, ``sys.timers``, ``sys.spool`` and ``sys.reload`` answered by the master itself.

Their state (the scheduler, the spooler, the metrics, the generations of workers) lives in the
master, so a worker could only ask the master for it. The relay peeks at a request packet that
names the ``sys.`` namespace: when every call in it is one of these four, without params, the
master runs the same :class:`~sbusr.endpoints.system.SystemEndpoint` methods thread mode runs and
writes the JSON-RPC reply on its bus connection. Anything else (params given, a batch mixing
other methods, an id that cannot be a reply title) goes to a worker like any request.

The calls block (a reload waits for a whole new generation), so they run on a small pool, never
on the relay loop; they are never time-limited, as in a worker.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from sbusr.endpoints import system
from sbusr.execution.messages import RESULT, Outcome
from sbusr.jsonrpc.encoding import dumps
from sbusr.jsonrpc.errors import INTERNAL_ERROR, RpcError, error_from_exception
from sbusr.jsonrpc.protocol import (
    Call,
    decode_payload,
    error_response,
    parse,
    reply_title,
    reply_title_for,
    result_response,
)
from sbusr.smartbus import codec
from sbusr.smartbus.codec import Packet

LOG = logging.getLogger("sbusr.execution")

#: the ``sys.`` methods whose state lives in the master
MASTER_METHODS = frozenset({"sys.stats", "sys.timers", "sys.spool", "sys.reload"})
#: the bytes a request naming one of them holds (a cheap test before parsing a packet)
_MARKER = b'"sys.'
#: calls the pool runs at once (a reload blocks one for its whole length)
POOL_SIZE = 4

Reply = Callable[[codec.Address, str, bytes], None]
Done = Callable[[list[Outcome], float, codec.Address], None]


class SystemCalls:
    """Picks the packets the master answers itself and answers them on a pool thread."""

    def __init__(self, encoding: str, max_request_size: int, debug: bool, decimal_as: str) -> None:
        self._encoding = encoding
        self._max_request_size = max_request_size
        self._debug = debug
        self._decimal_as = decimal_as
        self._endpoint = system.SystemEndpoint()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=POOL_SIZE,
                                                           thread_name_prefix="sbusr-sys")

    def calls_in(self, packet: Packet) -> tuple[bool, list[Call]] | None:
        """``(is_batch, calls)`` when every call of ``packet`` is one the master answers, else None."""
        body = packet.body
        if _MARKER not in body or len(body) > self._max_request_size:
            return None
        try:
            parsed = parse(decode_payload(body, self._encoding))
        except RpcError:
            return None
        calls = parsed.items
        if not calls or not all(self._answerable(item) for item in calls):
            return None
        return parsed.is_batch, calls

    def _answerable(self, item: Any) -> bool:
        return (isinstance(item, Call) and item.method in MASTER_METHODS and not item.params
                and (item.is_notification
                     or codec.notify_title_problem(reply_title(item.id), self._encoding) is None))

    def answer(self, packet: Packet, batch: bool, calls: list[Call], send: Reply, done: Done) -> None:
        """Run ``calls`` on the pool; ``send`` writes the reply, ``done`` gets the outcomes after it."""
        self._pool.submit(self._run, packet, batch, calls, send, done)

    def _run(self, packet: Packet, batch: bool, calls: list[Call], send: Reply, done: Done) -> None:
        started = time.monotonic()
        responses: list[dict[str, Any]] = []
        outcomes: list[Outcome] = []
        for call in calls:
            try:
                value = getattr(self._endpoint, call.name)(None)
            except Exception as exc:
                code, text, data = error_from_exception(exc, self._debug)
                if isinstance(exc, RpcError):
                    LOG.info("%s answered %d: %s", call.method, code, text)
                else:
                    LOG.exception("%s failed", call.method)
                response = error_response(call.id, code, text, data)
                outcome = Outcome(call.method, code, text)
            else:
                response = result_response(call.id, value)
                outcome = Outcome(call.method, RESULT)
            if not call.is_notification:
                responses.append(response)
                outcomes.append(outcome)
        title = reply_title_for(list(calls))
        if responses and title is not None:
            body = dumps(responses if batch else responses[0], self._decimal_as)
            if len(body) > codec.MAX_NOTIFY_PARAM:
                body = self._too_large(responses, batch, len(body))
                outcomes = [Outcome(o.method, INTERNAL_ERROR, "response too large") for o in outcomes]
            try:
                send(packet.src, title, body)
            except Exception as exc:
                LOG.error("could not send reply %r to %s: %s", title, packet.src, exc)
        done(outcomes, time.monotonic() - started, packet.src)

    @staticmethod
    def _too_large(responses: list[dict[str, Any]], batch: bool, size: int) -> bytes:
        """The -32603 sent instead of a reply over the NOTIFY limit (these replies are few and small)."""
        message = f"response is {size} bytes; a SmartBus NOTIFY carries at most {codec.MAX_NOTIFY_PARAM}"
        errors = [error_response(r.get("id"), INTERNAL_ERROR, message) for r in responses]
        return dumps(errors if batch else errors[0])

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
