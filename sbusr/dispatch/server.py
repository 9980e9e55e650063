"""sbusr's RPCServer: oslo's dispatcher with one log line per failed call, which also tells the
layers below which call the current thread runs (:func:`current_call`)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import oslo_messaging
from oslo_messaging.rpc import dispatcher as rpc_dispatcher
from oslo_messaging.rpc import server as rpc_server_module

from sbusr.dispatch import context
from sbusr.dispatch.adapter import AccessPolicy, _expected
from sbusr.jsonrpc.errors import (
    CALL_TIMEOUT,
    INTERNAL_ERROR,
    MAX_QUOTED_NAME,
    SERVER_BUSY,
    WORKER_CRASHED,
    MethodNotFound,
    MethodRaised,
    RpcError,
    cut,
)

LOG = logging.getLogger("sbusr.dispatch")  # one logger name for operators across the package


#: codes the execution layer logs itself (with the worker or thread it concerns): not logged twice
_LOGGED_BELOW = frozenset({CALL_TIMEOUT, WORKER_CRASHED})
_WARNING_CODES = frozenset({SERVER_BUSY, INTERNAL_ERROR})
#: the incoming message being dispatched in this thread (a context variable: one per thread)
_current: contextvars.ContextVar[Any] = contextvars.ContextVar("sbusr_current_call", default=None)


def current_call() -> Any:
    """The incoming message the calling thread is dispatching, None outside a call.

    The execution layer learns its call here, whatever the transport: thread mode answers an
    overrunning call early through the message's ``answer_early``, a process-mode worker reports a
    call's time limit to its master through the message's ``exchange``.
    """
    return _current.get()


@contextlib.contextmanager
def serving(incoming: Any) -> Iterator[None]:
    """Make ``incoming`` the current call of this thread for the ``with`` block (as dispatch does)."""
    token = _current.set(incoming)
    try:
        yield
    finally:
        _current.reset(token)


def caller_of(ctxt: Any) -> str:
    """"unit/client" of the SmartBus caller in a request context, "?" when it has none."""
    source = ctxt.get("source") if isinstance(ctxt, dict) else None
    if isinstance(source, dict):
        return f"{source.get('unit')}/{source.get('client')}"
    return "?"


class Dispatcher(rpc_dispatcher.RPCDispatcher):
    """oslo's RPCDispatcher plus one log line per failed call; tracebacks only for the unexpected.

    oslo's RPCServer logs ``NoSuchMethod``/``UnsupportedVersion`` and every exception that is not an
    ``ExpectedException`` with ``LOG.exception`` (a newcomer's typo gave 16 ERROR lines ending in a
    misleading "Endpoint does not support RPC version 1.0"), and an ``ExpectedException`` only at
    DEBUG. So every failure leaves here as an ``ExpectedException`` after one line was written here:
    expected outcomes (-32601, -32602, an ``RpcError`` raised on purpose, busy) at INFO/WARNING with
    method, caller and code; a method's unexpected exception at ERROR with its traceback.
    """

    def replace_endpoints(self, endpoints: Sequence[Any]) -> None:
        """Serve ``endpoints`` (a reloaded registry's adapters) from the next message on; calls
        already dispatched keep the endpoints they started with (the old list is never mutated)."""
        self.endpoints = list(endpoints)

    def dispatch(self, incoming: Any) -> Any:
        token = _current.set(incoming)  # not serving(): this runs once per call
        try:
            return super().dispatch(incoming)
        except rpc_dispatcher.ExpectedException as exc:
            error = exc.exc_info[1]
            if isinstance(error, RpcError):
                self._log_expected(incoming, error)
            raise
        except (rpc_dispatcher.NoSuchMethod, rpc_dispatcher.UnsupportedVersion):
            error = MethodNotFound(f"Method not found: {self._name(incoming)}")
            self._log_expected(incoming, error)
            raise _expected(error) from None
        except Exception:
            LOG.error("%s from %s raised an unexpected exception", self._name(incoming),
                      caller_of(incoming.ctxt), exc_info=True)
            raise rpc_dispatcher.ExpectedException() from None  # keeps sys.exc_info(): the reply's error
        finally:
            _current.reset(token)

    @staticmethod
    def _name(incoming: Any) -> str:
        message = incoming.message
        namespace, method = message.get("namespace"), str(message.get("method"))
        return cut(f"{namespace}.{method}" if namespace else method, MAX_QUOTED_NAME)

    def _log_expected(self, incoming: Any, error: RpcError) -> None:
        if error.code in _LOGGED_BELOW or isinstance(error, MethodRaised):
            return
        LOG.log(logging.WARNING if error.code in _WARNING_CODES else logging.INFO, "%s from %s: %d %s",
                self._name(incoming), caller_of(incoming.ctxt), error.code,
                cut(error.message, MAX_QUOTED_NAME))


def rpc_server(transport: Any, target: oslo_messaging.Target, endpoints: list[Any]) -> Any:
    """The standard oslo.messaging RPCServer (threading executor) with sbusr's :class:`Dispatcher`."""
    context.install_log_filter()  # logging is set up by now: its lines during a call carry the request id
    dispatcher = Dispatcher(endpoints, None, AccessPolicy)
    return rpc_server_module.RPCServer(transport, target, dispatcher, "threading")
