"""Original-sbusr ``methods`` packages as endpoints: plain functions, classmethods and staticmethods
without ``ctxt``, served unchanged (JSON-RPC ``a.b.c`` calls ``<package>.a.b.c``)."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import oslo_messaging

from sbusr.dispatch.registry import LoadError

LOG = logging.getLogger("sbusr.dispatch")  # one logger name for operators across the package


def _legacy_wrapper(func: Callable[..., Any], package_name: str, namespace: str | None,
                    name: str) -> Callable[..., Any] | None:
    """A ``(ctxt, *args, **kwargs)`` function calling ``func`` without ctxt, with func's signature."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    ctxt_param = inspect.Parameter("sbusr_legacy_ctxt", inspect.Parameter.POSITIONAL_ONLY)

    call: Any  # a function that gets func's name, signature and doc below
    if inspect.iscoroutinefunction(func):
        async def call_coroutine(ctxt: Any, /, *args: Any, **kwargs: Any) -> Any:
            return await func(*args, **kwargs)
        call = call_coroutine
    else:
        def call_function(ctxt: Any, /, *args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)
        call = call_function

    try:
        call.__signature__ = sig.replace(parameters=[ctxt_param, *sig.parameters.values()])
    except ValueError:
        return None
    call.__name__ = name
    call.__qualname__ = ".".join(filter(None, (package_name, namespace, name)))  # <package>.a.b.c
    call.__doc__ = func.__doc__
    call.__wrapped__ = func  # its annotations: typed params, discovery
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


def legacy_groups(package_name: str, errors: list[LoadError]) -> dict[str | None, dict[str, Callable]]:
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


def legacy_endpoint(package_name: str, namespace: str | None, functions: dict[str, Callable]) -> Any:
    attrs: dict[str, Any] = {"target": oslo_messaging.Target(namespace=namespace), "__module__": __name__}
    for name, func in functions.items():
        wrapper = _legacy_wrapper(func, package_name, namespace, name)
        if wrapper is None:
            LOG.warning("Legacy %s.%s has no usable signature; not exposed", package_name, name)
            continue
        attrs[name] = staticmethod(wrapper)
    cls = type(f"Legacy_{package_name}_{namespace or 'root'}".replace(".", "_"), (), attrs)
    return cls()


def purge_package(package_name: str) -> None:
    for name in [n for n in sys.modules if n == package_name or n.startswith(package_name + ".")]:
        del sys.modules[name]
