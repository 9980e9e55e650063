"""Endpoint loading and the adapters that let oslo.messaging's RPCDispatcher call them safely.

oslo's dispatcher picks an endpoint by ``target.namespace`` and then does ``hasattr(endpoint, method)``
and ``getattr(endpoint, method)(ctxt, **args)`` with a method name that came off the wire. Handing it
user objects directly would expose every attribute; :class:`EndpointAdapter` instead answers only for
public functions/classmethods/staticmethods defined on the endpoint's class, binds the JSON-RPC
params to the real signature (bad params -> ``InvalidParams``, -32602) and calls through an overridable
``invoker`` hook that the execution layer replaces.

Load order (first offer of a name wins, later ones are logged as duplicates): ``[endpoints] modules``,
``directories``, ``legacy_packages``, then the ``sbusr.endpoints`` entry points (the built-ins), so
explicitly configured code can replace a built-in method.

Reserved method names (see ``jsonrpc.RESERVED_METHOD_NAMES``): ``target``, ``endpoint``, ``origin``
and ``invoker`` are attributes of the adapter itself and are never dispatched (the JSON-RPC parser
refuses them; :func:`rpc_server` also passes :class:`AccessPolicy` as a second guard).

Swapping in a reloaded registry: assign ``rpc_server.dispatcher.endpoints = new_registry.adapters``
(the dispatcher reads that attribute once per message; do not mutate the old list in place).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import linecache
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import oslo_messaging
from oslo_messaging.rpc import dispatcher as rpc_dispatcher
from oslo_messaging.rpc import server as rpc_server_module

from sbusr import jsonrpc, opts

LOG = logging.getLogger(__name__)

#: Key of ``message["args"]`` under which the driver passes positional JSON-RPC params.
POSITIONAL_KEY = "*args"

ENTRY_POINT_GROUP = "sbusr.endpoints"
RESERVED_NAMES = jsonrpc.RESERVED_METHOD_NAMES
_BUILTIN_PREFIX = "sbusr.endpoints."


class EndpointOrigin(NamedTuple):
    """How to re-create an endpoint in another process (see :func:`create_endpoint`).

    kind: 'module' | 'file' | 'entry_point' | 'legacy' | 'builtin'. ``module_or_path`` is a module
    name (a file path for 'file', the package name for 'legacy'); ``qualname`` is the class's
    qualified name (the namespace for 'legacy', '' for the package root).
    """

    kind: str
    module_or_path: str
    qualname: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.module_or_path}:{self.qualname}"


def oslo_message(call: jsonrpc.Call) -> dict[str, Any]:
    """The oslo.messaging message for one JSON-RPC call: ``a.b.c`` -> namespace ``a.b``, method ``c``;
    positional params travel under :data:`POSITIONAL_KEY`, named ones as the args themselves."""
    namespace, method = jsonrpc.split_method(call.method)
    args = dict(call.params) if isinstance(call.params, dict) else {POSITIONAL_KEY: list(call.params)}
    return {"method": method, "namespace": namespace, "args": args}


Invoker = Callable[[Callable[..., Any], Any, tuple, dict], Any]


def direct_invoke(fn: Callable[..., Any], ctxt: Any, args: tuple, kwargs: dict) -> Any:
    """Default invoker: call the bound endpoint method in the calling thread."""
    return fn(ctxt, *args, **kwargs)


def _expected(error: jsonrpc.RpcError) -> rpc_dispatcher.ExpectedException:
    """Wrap ``error`` in oslo's ExpectedException: RPCServer logs it at DEBUG instead of with a
    traceback, and replies with the wrapped error (``jsonrpc.error_from_exception`` unwraps it too)."""
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
            self._callers[name] = self._make_caller(name, fn, sig)

    def _make_caller(self, name: str, fn: Callable[..., Any], sig: inspect.Signature):
        bind = sig.bind
        fits = _arity_check(sig)
        namespace = self.target.namespace
        full_name = f"{namespace}.{name}" if namespace else name
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
                    args, kwargs = bound.args, bound.kwargs
            except TypeError as exc:  # logged by Dispatcher, with the caller
                raise _expected(jsonrpc.InvalidParams(f"Invalid params for {full_name}: {exc}")) from None
            try:
                return adapter.invoker(fn, ctxt, args, kwargs)
            except jsonrpc.RpcError as exc:
                raise _expected(exc) from None

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


# --------------------------------------------------------------------------- dispatcher and outcome log

#: codes the execution layer logs itself (with the worker or thread it concerns): not logged twice
_LOGGED_BELOW = frozenset({jsonrpc.CALL_TIMEOUT, jsonrpc.WORKER_CRASHED})
_WARNING_CODES = frozenset({jsonrpc.SERVER_BUSY, jsonrpc.INTERNAL_ERROR})


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

    def dispatch(self, incoming: Any) -> Any:
        try:
            return super().dispatch(incoming)
        except rpc_dispatcher.ExpectedException as exc:
            error = exc.exc_info[1]
            if isinstance(error, jsonrpc.RpcError):
                self._log_expected(incoming, error)
            raise
        except (rpc_dispatcher.NoSuchMethod, rpc_dispatcher.UnsupportedVersion):
            error = jsonrpc.MethodNotFound(f"Method not found: {self._name(incoming)}")
            self._log_expected(incoming, error)
            raise _expected(error) from None
        except Exception:
            LOG.error("%s from %s raised an unexpected exception", self._name(incoming),
                      caller_of(incoming.ctxt), exc_info=True)
            raise rpc_dispatcher.ExpectedException() from None  # keeps sys.exc_info(): the reply's error

    @staticmethod
    def _name(incoming: Any) -> str:
        message = incoming.message
        namespace, method = message.get("namespace"), str(message.get("method"))
        return jsonrpc.cut(f"{namespace}.{method}" if namespace else method, jsonrpc.MAX_QUOTED_NAME)

    def _log_expected(self, incoming: Any, error: jsonrpc.RpcError) -> None:
        if error.code in _LOGGED_BELOW or isinstance(error, jsonrpc.MethodRaised):
            return
        LOG.log(logging.WARNING if error.code in _WARNING_CODES else logging.INFO, "%s from %s: %d %s",
                self._name(incoming), caller_of(incoming.ctxt), error.code,
                jsonrpc.cut(error.message, jsonrpc.MAX_QUOTED_NAME))


def rpc_server(transport: Any, target: oslo_messaging.Target, endpoints: list[Any]) -> Any:
    """The standard oslo.messaging RPCServer (threading executor) with sbusr's :class:`Dispatcher`."""
    dispatcher = Dispatcher(endpoints, None, AccessPolicy)
    return rpc_server_module.RPCServer(transport, target, dispatcher, "threading")


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Duplicate:
    name: str
    kept: EndpointOrigin
    ignored: EndpointOrigin


@dataclass(frozen=True)
class LoadError:
    source: str
    error: str


class Registry:
    """The loaded endpoints: ``adapters`` for the RPCServer, the method index, duplicates, errors."""

    def __init__(self, adapters: list[EndpointAdapter], errors: list[LoadError] | None = None,
                 modules: list[tuple[str, str, ModuleType]] | None = None):
        self.adapters = list(adapters)
        self.errors = list(errors or [])
        #: (kind, source, module) of every endpoint module loaded (not legacy packages): where
        #: ``@timer``/``@cron``/``@spool`` functions are found
        self.modules = list(modules or [])
        self.duplicates: list[Duplicate] = []
        self._owners: dict[str, EndpointOrigin] = {}
        for adapter in self.adapters:
            for full in adapter_full_names(adapter):
                kept = self._owners.get(full)
                if kept is None:
                    self._owners[full] = adapter.origin
                    continue
                self.duplicates.append(Duplicate(full, kept, adapter.origin))
                LOG.warning("Method %s is offered by %s and %s; %s is used", full, kept, adapter.origin, kept)

    def methods(self) -> list[str]:
        return sorted(self._owners)

    def origin_of(self, method: str) -> EndpointOrigin | None:
        return self._owners.get(method)

    def set_invoker(self, invoker: Invoker) -> None:
        """Route every call of every adapter through ``invoker(fn, ctxt, args, kwargs)``."""
        for adapter in self.adapters:
            adapter.invoker = invoker

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (the sys.reload result)."""
        return {
            "endpoints": len(self.adapters),
            "methods": len(self._owners),
            "duplicates": [{"name": d.name, "kept": str(d.kept), "ignored": str(d.ignored)}
                           for d in self.duplicates],
            "errors": [{"source": e.source, "error": e.error} for e in self.errors],
        }


# --------------------------------------------------------------------------- loading helpers

def _file_module_name(path: str) -> str:
    """Stable, unique module name for an endpoint file: sbusr_ep_<folder hash>_<stem>."""
    path = os.path.abspath(path)
    folder_hash = hashlib.sha1(os.path.dirname(path).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    return f"sbusr_ep_{folder_hash}_{stem}"


def _exec_file_module(path: str, name: str) -> ModuleType:
    """Execute ``path`` as a new module object ``name`` (always from source: edits take effect at once)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    with open(path, "rb") as fh:
        code = compile(fh.read(), path, "exec", dont_inherit=True)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # needed while executing (dataclasses, pickling by reference)
    try:
        exec(code, module.__dict__)
    except BaseException:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        raise
    linecache.checkcache(path)
    return module


def _endpoint_classes(module: ModuleType) -> Iterator[type]:
    """Classes defined in ``module`` itself (not imported into it) with an oslo Target ``target``."""
    for name, obj in list(vars(module).items()):
        if (isinstance(obj, type) and obj.__module__ == module.__name__ and obj.__qualname__ == name
                and isinstance(getattr(obj, "target", None), oslo_messaging.Target)):
            yield obj


def _resolve_qualname(module: ModuleType, qualname: str) -> Any:
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------- legacy 'methods' packages

def _legacy_wrapper(func: Callable[..., Any], package_name: str, namespace: str | None,
                    name: str) -> Callable[..., Any] | None:
    """A ``(ctxt, *args, **kwargs)`` function calling ``func`` without ctxt, with func's signature."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    ctxt_param = inspect.Parameter("sbusr_legacy_ctxt", inspect.Parameter.POSITIONAL_ONLY)

    def call(ctxt: Any, /, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    try:
        call.__signature__ = sig.replace(parameters=[ctxt_param, *sig.parameters.values()])
    except ValueError:
        return None
    call.__name__ = name
    call.__qualname__ = ".".join(filter(None, (package_name, namespace, name)))  # <package>.a.b.c
    call.__doc__ = func.__doc__
    return call


def _iter_public_submodules(package: ModuleType, errors: list[LoadError]) -> Iterator[tuple[str, ModuleType]]:
    """(relative name, module) for every public submodule, recursively; broken ones logged and skipped."""
    prefix = package.__name__ + "."
    for info in pkgutil.iter_modules(getattr(package, "__path__", []), prefix):
        short = info.name.rsplit(".", 1)[1]
        if short.startswith("_"):
            continue
        try:
            module = importlib.import_module(info.name)
        except (Exception, SystemExit) as exc:
            LOG.exception("Cannot import legacy module %s; skipped", info.name)
            errors.append(LoadError(info.name, f"{type(exc).__name__}: {exc}"))
            continue
        yield info.name[len(prefix):], module
        if info.ispkg:
            for rel, sub in _iter_public_submodules(module, errors):
                yield f"{info.name[len(prefix):]}.{rel}", sub


def _legacy_groups(package_name: str, errors: list[LoadError]) -> dict[str | None, dict[str, Callable]]:
    """namespace -> {method name: legacy callable} for a methods-style package."""
    package = importlib.import_module(package_name)
    groups: dict[str | None, dict[str, Callable]] = {}

    def offer(namespace: str | None, name: str, func: Callable) -> None:
        group = groups.setdefault(namespace, {})
        if name in group:
            full = f"{namespace}.{name}" if namespace else name
            LOG.warning("Legacy package %s defines %s twice; the first is used", package_name, full)
            return
        group[name] = func

    for rel, module in [(None, package), *_iter_public_submodules(package, errors)]:
        for name, obj in list(vars(module).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                offer(rel, name, obj)
            elif isinstance(obj, type) and obj.__qualname__ == name:
                namespace = f"{rel}.{name}" if rel else name
                for attr in dir(obj):
                    if attr.startswith("_"):
                        continue
                    raw = inspect.getattr_static(obj, attr, None)
                    if isinstance(raw, (classmethod, staticmethod)) and inspect.isfunction(raw.__func__):
                        offer(namespace, attr, getattr(obj, attr))
    return groups


def _legacy_endpoint(package_name: str, namespace: str | None, functions: dict[str, Callable]) -> Any:
    attrs: dict[str, Any] = {"target": oslo_messaging.Target(namespace=namespace), "__module__": __name__}
    for name, func in functions.items():
        wrapper = _legacy_wrapper(func, package_name, namespace, name)
        if wrapper is None:
            LOG.warning("Legacy %s.%s has no usable signature; not exposed", package_name, name)
            continue
        attrs[name] = staticmethod(wrapper)
    cls = type(f"Legacy_{package_name}_{namespace or 'root'}".replace(".", "_"), (), attrs)
    return cls()


def _purge_package(package_name: str) -> None:
    for name in [n for n in sys.modules if n == package_name or n.startswith(package_name + ".")]:
        del sys.modules[name]


# --------------------------------------------------------------------------- loader

class _Loader:
    def __init__(self, fresh: bool):
        self.fresh = fresh
        self.adapters: list[EndpointAdapter] = []
        self.errors: list[LoadError] = []
        self.modules: list[tuple[str, str, ModuleType]] = []

    def _fail(self, source: str, exc: BaseException, what: str) -> None:
        LOG.exception("Cannot load %s %s; skipped", what, source)
        self.errors.append(LoadError(source, f"{type(exc).__name__}: {exc}"))

    def _add(self, endpoint: Any, origin: EndpointOrigin) -> None:
        adapter = EndpointAdapter(endpoint, origin)
        version = adapter.target.version
        if version and version.split(".")[0] != "1":
            LOG.warning("Endpoint %s has target version %s; JSON-RPC calls ask for 1.0 and will not reach it",
                        origin, version)
        self.adapters.append(adapter)

    def add_module_object(self, module: ModuleType, kind: str, source: str) -> None:
        self.modules.append((kind, source, module))
        for cls in _endpoint_classes(module):
            origin = EndpointOrigin(kind, source, cls.__qualname__)
            try:
                endpoint = cls()
            except (Exception, SystemExit) as exc:
                self._fail(str(origin), exc, "endpoint")
                continue
            self._add(endpoint, origin)

    def add_module(self, name: str, kind: str = "module") -> None:
        try:
            if self.fresh and name in sys.modules and not name.startswith(_BUILTIN_PREFIX):
                importlib.invalidate_caches()
                module = importlib.reload(sys.modules[name])
            else:
                module = importlib.import_module(name)
        except (Exception, SystemExit) as exc:
            self._fail(name, exc, "endpoint module")
            return
        self.add_module_object(module, kind, name)

    def add_directory(self, folder: str) -> None:
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:  # an operator's mistake, not a bug: one line, no traceback
            error: OSError | None = exc
        else:
            error = None
        if error is not None:  # logged outside the except block: oslo.log would append the exception
            reason = ("does not exist" if isinstance(error, FileNotFoundError)
                      else error.strerror or str(error))
            LOG.error("Endpoint folder %s ([endpoints] directories) %s; no endpoints loaded from it",
                      folder, reason)
            self.errors.append(LoadError(folder, f"{type(error).__name__}: {reason}"))
            return
        for filename in names:
            path = os.path.abspath(os.path.join(folder, filename))
            if not filename.endswith(".py") or filename.startswith(("_", ".")) or not os.path.isfile(path):
                continue
            try:
                module = _exec_file_module(path, _file_module_name(path))
            except (Exception, SystemExit) as exc:
                self._fail(path, exc, "endpoint file")
                continue
            self.add_module_object(module, "file", path)

    def add_legacy(self, package_name: str) -> None:
        try:
            if self.fresh:
                _purge_package(package_name)
                importlib.invalidate_caches()
            groups = _legacy_groups(package_name, self.errors)
        except (Exception, SystemExit) as exc:
            self._fail(package_name, exc, "legacy package")
            return
        for namespace, functions in groups.items():
            endpoint = _legacy_endpoint(package_name, namespace, functions)
            self._add(endpoint, EndpointOrigin("legacy", package_name, namespace or ""))

    def add_entry_points(self) -> None:
        from stevedore import extension

        def on_failure(_manager: Any, entry_point: Any, exc: BaseException) -> None:
            LOG.error("Cannot load endpoint entry point %s (%s): %s",
                      entry_point.name, entry_point.value, exc)
            self.errors.append(LoadError(f"entry point {entry_point.name}", f"{type(exc).__name__}: {exc}"))

        manager = extension.ExtensionManager(ENTRY_POINT_GROUP, invoke_on_load=False,
                                             on_load_failure_callback=on_failure)
        for ext in sorted(manager.extensions, key=lambda e: e.name):
            module = ext.plugin
            if not isinstance(module, ModuleType):
                self.errors.append(LoadError(f"entry point {ext.name}", "does not name a module"))
                LOG.error("Endpoint entry point %s does not name a module; skipped", ext.name)
                continue
            kind = "builtin" if module.__name__.startswith(_BUILTIN_PREFIX) else "entry_point"
            self.add_module(module.__name__, kind)


def load_endpoints(conf: Any, fresh: bool = False) -> Registry:
    """Load every configured endpoint source (``conf.endpoints``) into a :class:`Registry`.

    With ``fresh`` (what :func:`reload` uses) module code is executed again: directory files are
    re-run from source, named modules and third-party entry-point modules go through
    ``importlib.reload``, and legacy packages are dropped from ``sys.modules`` and imported anew.
    sbusr's own built-in modules are only re-instantiated.
    """
    group = conf.endpoints
    loader = _Loader(fresh)
    for name in group.modules:
        loader.add_module(name)
    for folder in group.directories:
        loader.add_directory(opts.config_relative(conf, folder, "directories", "endpoints"))
    for package_name in group.legacy_packages:
        loader.add_legacy(package_name)
    if group.entry_points:
        loader.add_entry_points()
    registry = Registry(loader.adapters, loader.errors, loader.modules)
    LOG.info("Loaded %d endpoints offering %d methods (%d load errors, %d duplicates)",
             len(registry.adapters), len(registry.methods()), len(registry.errors), len(registry.duplicates))
    return registry


def reload(conf: Any) -> Registry:
    """Re-import all endpoint code so edits take effect; returns a new Registry."""
    return load_endpoints(conf, fresh=True)


# --------------------------------------------------------------------------- re-creation (workers)

def module_for(kind: str, source: str) -> ModuleType:
    """The endpoint module of a loaded source, loading it if this process has not yet.

    ``kind``/``source`` as in :class:`EndpointOrigin` ('module', 'entry_point', 'builtin' or 'file').
    """
    if kind in ("module", "entry_point", "builtin"):
        return importlib.import_module(source)
    if kind == "file":
        name = _file_module_name(source)
        module = sys.modules.get(name)
        if module is None or getattr(module, "__file__", None) != source:
            module = _exec_file_module(source, name)
        return module
    raise ValueError(f"no module for endpoint source kind {kind!r}")


def check_source(path: str) -> None:
    """Execute an endpoint file once under a throw-away module name; raises what importing it raises.

    Reload on save calls it before reloading, so a file saved half-written never replaces working
    code. The file's module-level code runs once more than usual (class bodies, imports).
    """
    name = "sbusr_check_" + _file_module_name(path)
    try:
        _exec_file_module(path, name)
    finally:
        sys.modules.pop(name, None)


def create_endpoint(origin: EndpointOrigin) -> Any:
    """Re-create the endpoint object described by ``origin`` (e.g. inside a worker process)."""
    kind, source, qualname = origin
    if kind in ("module", "entry_point", "builtin", "file"):
        return _resolve_qualname(module_for(kind, source), qualname)()
    if kind == "legacy":
        errors: list[LoadError] = []
        groups = _legacy_groups(source, errors)
        namespace = qualname or None
        if namespace not in groups:
            raise LookupError(f"legacy package {source} has no namespace {qualname!r}")
        return _legacy_endpoint(source, namespace, groups[namespace])
    raise ValueError(f"unknown endpoint origin kind {kind!r}")


def adapter_from_origin(origin: EndpointOrigin) -> EndpointAdapter:
    return EndpointAdapter(create_endpoint(origin), origin)
