"""The adapter that lets oslo.messaging's RPCDispatcher call an endpoint safely, and its access policy.

oslo's dispatcher picks an endpoint by ``target.namespace`` and then does ``hasattr(endpoint, method)``
and ``getattr(endpoint, method)(ctxt, **args)`` with a method name that came off the wire. Handing it
user objects directly would expose every attribute; :class:`EndpointAdapter` instead answers only for
public functions/classmethods/staticmethods defined on the endpoint's class, binds the JSON-RPC
params to the real signature (bad params -> ``InvalidParams``, -32602) and calls through an overridable
``invoker`` hook that the execution layer replaces.

Reserved method names (:data:`RESERVED_NAMES`): ``target``, ``endpoint``, ``origin`` and ``invoker``
are attributes of the adapter itself and are never dispatched: pass :class:`AccessPolicy` to
``get_rpc_server`` (sbusr-server does), which refuses them and every private name.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any, NamedTuple

import oslo_messaging
from oslo_messaging.rpc import dispatcher as rpc_dispatcher

from sbusr.dispatch import aio, context, typed
from sbusr.jsonrpc.errors import InvalidParams, RpcError
from sbusr.jsonrpc.protocol import POSITIONAL_KEY

LOG = logging.getLogger("sbusr.dispatch")  # one logger name for operators across the package

#: Attribute names of :class:`EndpointAdapter` that oslo's dispatcher would find before any endpoint
#: method; a method with one of these names is never dispatched (see :class:`AccessPolicy`).
RESERVED_NAMES = frozenset({"target", "endpoint", "origin", "invoker"})


class OriginKind(StrEnum):
    """Where an endpoint was loaded from; the string travels to worker and spooler processes."""

    MODULE = "module"  # [endpoints] modules
    FILE = "file"  # a .py file of [endpoints] directories
    ENTRY_POINT = "entry_point"  # an installed package's sbusr.endpoints entry point
    BUILTIN = "builtin"  # sbusr's own entry points (sbusr.endpoints.*)
    LEGACY = "legacy"  # an original-sbusr methods package
    SQL = "sql"  # a .sql file of [sql] directories
    INSTANCE = "instance"  # an object the test kit was given (not re-creatable)


class EndpointOrigin(NamedTuple):
    """How to re-create an endpoint in another process (see :func:`create_endpoint`).

    ``module_or_path`` is a module name (a file path for FILE and SQL, the package name for LEGACY);
    ``qualname`` is the class's qualified name (the namespace for LEGACY and SQL, '' for the package
    root).
    """

    kind: OriginKind
    module_or_path: str
    qualname: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.module_or_path}:{self.qualname}"


Invoker = Callable[[Callable[..., Any], Any, tuple, dict], Any]


def direct_invoke(fn: Callable[..., Any], ctxt: Any, args: tuple, kwargs: dict) -> Any:
    """Default invoker: call the bound endpoint method in the calling thread."""
    return fn(ctxt, *args, **kwargs)


def _expected(error: RpcError) -> rpc_dispatcher.ExpectedException:
    """Wrap ``error`` in oslo's ExpectedException: RPCServer logs it at DEBUG instead of with a
    traceback, and replies with the wrapped error (``error_from_exception`` unwraps it too)."""
    wrapped = rpc_dispatcher.ExpectedException()
    wrapped.exc_info = (type(error), error, error.__traceback__)
    return wrapped


def _rpc_function(cls: type, name: str, instance: Any) -> Callable[..., Any] | None:
    """The bound callable for ``name`` if the CLASS defines it as a function/classmethod/staticmethod."""
    try:
        raw = inspect.getattr_static(cls, name)
    except AttributeError:
        return None
    func = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
    # A Python function written in a class body (qualname "Cls.name"); module-level functions and
    # builtins merely assigned as class attributes (system = os.system) are never exposed.
    if not inspect.isfunction(func) or "." not in func.__qualname__:
        return None
    if isinstance(raw, staticmethod):
        return func
    if isinstance(raw, classmethod):
        return func.__get__(cls, cls)
    return func.__get__(instance, cls)


def _params_signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """Signature of ``fn`` without its first (ctxt) parameter; None if it cannot take one."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return None
    return sig.replace(parameters=params[1:])


def _arity_check(sig: inspect.Signature) -> Callable[[int], bool] | None:
    """For a signature of plain parameters only: a test that ``n`` positional arguments bind.

    Binding a signature costs several µs per call; for the common ``def m(self, ctxt, a, b=1)``
    shape, counting is enough. None means "use Signature.bind" (``*args``, keyword-only, ...).
    """
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(sig.parameters.values())
    if any(p.kind not in plain for p in params):
        return None
    most = len(params)
    least = sum(1 for p in params if p.default is inspect.Parameter.empty)
    return lambda n: least <= n <= most


class EndpointAdapter:
    """Wraps one endpoint object for oslo's RPCDispatcher.

    ``getattr(adapter, name)`` returns a ``(ctxt, **kwargs)`` callable only for the endpoint's public
    methods and raises AttributeError otherwise (oslo then raises NoSuchMethod -> -32601). The
    method table is built once here, so the per-call cost is one dict lookup plus signature binding.
    Only the reserved names below are real attributes; everything else private is ``_``-prefixed.
    """

    invoker: Invoker = staticmethod(direct_invoke)

    def __init__(self, endpoint: Any, origin: EndpointOrigin):
        target = getattr(endpoint, "target", None)
        if not isinstance(target, oslo_messaging.Target):
            raise TypeError(f"endpoint {origin} has no oslo_messaging.Target 'target' attribute")
        self.endpoint = endpoint
        self.origin = origin
        self.target = target
        self._callers: dict[str, Callable[..., Any]] = {}
        #: name -> (the method as written, its signature without ctxt): what discovery describes
        self._specs: dict[str, tuple[Callable[..., Any], inspect.Signature]] = {}
        cls = type(endpoint)
        for name in dir(cls):
            if name.startswith("_") or name == "target":
                continue
            fn = _rpc_function(cls, name, endpoint)
            if fn is None:
                continue
            if name in RESERVED_NAMES:
                LOG.warning("Endpoint %s: method %r uses a reserved name and cannot be called", origin, name)
                continue
            sig = _params_signature(fn)
            if sig is None:
                LOG.warning("Endpoint %s: method %r takes no ctxt parameter; not exposed", origin, name)
                continue
            self._specs[name] = (fn, sig)
            self._callers[name] = self._make_caller(name, fn, sig)

    def _make_caller(self, name: str, fn: Callable[..., Any], sig: inspect.Signature):
        bind = sig.bind
        namespace = self.target.namespace
        full_name = f"{namespace}.{name}" if namespace else name
        validate = typed.validator_for(full_name, fn, sig)  # None: no annotations, nothing to check
        fits = _arity_check(sig) if validate is None else None
        if aio.is_async(fn):
            fn = aio.blocking(fn)
        adapter = self

        def call(ctxt: Any, /, **kwargs: Any) -> Any:  # positional-only: a param may be named ctxt
            positional = kwargs.pop(POSITIONAL_KEY, ())
            try:
                if not isinstance(positional, (list, tuple)):
                    raise TypeError("positional params must be an array")
                if fits is not None and not kwargs and fits(len(positional)):
                    args, kwargs = tuple(positional), {}  # what bind() returns here, without its cost
                else:
                    bound = bind(*positional, **kwargs)
                    if validate is not None:
                        validate(bound.arguments)
                    args, kwargs = bound.args, bound.kwargs
            except TypeError as exc:  # logged by Dispatcher, with the caller
                raise _expected(InvalidParams(f"Invalid params for {full_name}: {exc}")) from None
            except InvalidParams as exc:
                raise _expected(exc) from None
            ctxt = context.of(ctxt, full_name)
            token = context.enter(ctxt)  # what oslo.log writes the request id from
            try:
                return adapter.invoker(fn, ctxt, args, kwargs)
            except RpcError as exc:
                raise _expected(exc) from None
            finally:
                context.leave(token)

        call.__name__ = name
        call.__qualname__ = full_name
        return call

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Only reached for names that are not real attributes; __dict__ guards against recursion.
        try:
            return self.__dict__["_callers"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"<EndpointAdapter {self.origin} namespace={self.target.namespace!r}>"


def adapter_methods(adapter: EndpointAdapter) -> list[str]:
    """Sorted public method names of one adapter (without namespace)."""
    return sorted(adapter._callers)


def adapter_full_names(adapter: EndpointAdapter) -> Iterator[str]:
    """JSON-RPC method names the adapter answers, over all namespaces its target accepts."""
    for namespace in adapter.target.accepted_namespaces:
        for name in adapter_methods(adapter):
            yield f"{namespace}.{name}" if namespace else name


class AccessPolicy(rpc_dispatcher.DefaultRPCAccessPolicy):
    """oslo access policy refusing private and reserved names (defence in depth for get_rpc_server)."""

    def is_allowed(self, endpoint: Any, method: str) -> bool:
        return not method.startswith("_") and method not in RESERVED_NAMES
