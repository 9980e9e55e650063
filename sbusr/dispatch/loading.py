"""Loading endpoints into a :class:`~sbusr.dispatch.registry.Registry`, and re-creating one elsewhere.

Load order (first offer of a name wins, later ones are logged as duplicates): ``[endpoints] modules``,
``directories``, the ``.sql`` files of ``[sql] directories``, ``legacy_packages``, then the
``sbusr.endpoints`` entry points (the built-ins), so explicitly configured code can replace a
built-in method.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import linecache
import logging
import os
import re
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import oslo_messaging
from oslo_config import cfg

from sbusr import opts
from sbusr.dispatch.adapter import EndpointAdapter, EndpointOrigin, OriginKind
from sbusr.dispatch.legacy import legacy_endpoint, legacy_groups, purge_package
from sbusr.dispatch.registry import LoadError, Registry

LOG = logging.getLogger("sbusr.dispatch")  # one logger name for operators across the package

ENTRY_POINT_GROUP = "sbusr.endpoints"
_BUILTIN_PREFIX = "sbusr.endpoints."
#: The built-in ``sys`` endpoint: it works on the server's own registry, so it runs in the server process.
SYSTEM_ENDPOINT_MODULE = "sbusr.endpoints.system"


def _sql() -> ModuleType:
    """:mod:`sbusr.sql.endpoints`, imported on first need: SQLAlchemy costs a process that serves no
    SQL methods about 0.2 s at start-up."""
    from sbusr.sql import endpoints

    return endpoints


def is_system_endpoint(adapter: EndpointAdapter) -> bool:
    """True for the built-in ``sys`` endpoint (loaded as a built-in from :data:`SYSTEM_ENDPOINT_MODULE`)."""
    origin = adapter.origin
    return origin.kind == OriginKind.BUILTIN and origin.module_or_path == SYSTEM_ENDPOINT_MODULE


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

    def add_module_object(self, module: ModuleType, kind: OriginKind, source: str) -> None:
        self.modules.append((kind, source, module))
        for cls in _endpoint_classes(module):
            origin = EndpointOrigin(kind, source, cls.__qualname__)
            try:
                endpoint = cls()
            except (Exception, SystemExit) as exc:
                self._fail(str(origin), exc, "endpoint")
                continue
            self._add(endpoint, origin)

    def add_module(self, name: str, kind: OriginKind = OriginKind.MODULE) -> None:
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
            self.add_module_object(module, OriginKind.FILE, path)

    def add_sql(self, conf: cfg.ConfigOpts) -> None:
        """The ``.sql`` files of ``[sql] directories`` (:mod:`sbusr.sql.endpoints`)."""
        if not conf.sql.directories and not conf.sql.databases:
            pools = sys.modules.get("sbusr.sql.pools")
            if pools is not None:  # SQL was configured before this reload: close its connections
                pools.POOLS.keep_only(set())
            return
        try:
            loaded, problems = _sql().load(conf)
        except Exception as exc:
            self._fail("[sql]", exc, "SQL methods of")
            return
        for problem in problems:
            LOG.error("%s", problem)
            self.errors.append(LoadError("[sql]", problem))
        for found in loaded:
            for problem in found.problems:  # one line each: an operator's mistake, not a bug
                LOG.error("SQL file %s", problem)
                self.errors.append(LoadError(found.path, problem))
            if found.endpoint is not None:
                self._add(found.endpoint, EndpointOrigin(OriginKind.SQL, found.path, found.name))

    def add_legacy(self, package_name: str) -> None:
        try:
            if self.fresh:
                purge_package(package_name)
                importlib.invalidate_caches()
            groups = legacy_groups(package_name, self.errors)
        except (Exception, SystemExit) as exc:
            self._fail(package_name, exc, "legacy package")
            return
        for namespace, functions in groups.items():
            endpoint = legacy_endpoint(package_name, namespace, functions)
            self._add(endpoint, EndpointOrigin(OriginKind.LEGACY, package_name, namespace or ""))

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
            builtin = module.__name__.startswith(_BUILTIN_PREFIX)
            kind = OriginKind.BUILTIN if builtin else OriginKind.ENTRY_POINT
            self.add_module(module.__name__, kind)


class _Silent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def load_endpoints(conf: cfg.ConfigOpts, fresh: bool = False, duplicates_level: int = logging.WARNING,
                   report: bool = True) -> Registry:
    """Load every configured endpoint source (``conf.endpoints``) into a :class:`Registry`.

    With ``fresh`` (what :func:`reload` uses) module code is executed again: directory files are
    re-run from source, named modules and third-party entry-point modules go through
    ``importlib.reload``, and legacy packages are dropped from ``sys.modules`` and imported anew.
    sbusr's own built-in modules are only re-instantiated. ``report=False`` logs nothing about the
    load (a process-mode worker: its master loads the same code and reports it once).
    """
    if not report:
        silent = _Silent()
        LOG.addFilter(silent)
        try:
            return load_endpoints(conf, fresh, duplicates_level)
        finally:
            LOG.removeFilter(silent)
    group = conf.endpoints
    loader = _Loader(fresh)
    for name in group.modules:
        loader.add_module(name)
    for folder in group.directories:
        loader.add_directory(opts.config_relative(conf, folder, "directories", "endpoints"))
    loader.add_sql(conf)
    for package_name in group.legacy_packages:
        loader.add_legacy(package_name)
    if group.entry_points:
        loader.add_entry_points()
    registry = Registry(loader.adapters, loader.errors, loader.modules, duplicates_level)
    LOG.info("Loaded %d endpoints offering %d methods (%d load errors, %d duplicates)",
             len(registry.adapters), len(registry.methods()), len(registry.errors), len(registry.duplicates))
    return registry


def reload(conf: cfg.ConfigOpts) -> Registry:
    """Re-import all endpoint code so edits take effect; returns a new Registry."""
    return load_endpoints(conf, fresh=True)


# --------------------------------------------------------------------------- re-creation (workers)

def module_for(kind: str, source: str) -> ModuleType:
    """The endpoint module of a loaded source, loading it if this process has not yet.

    ``kind``/``source`` as in :class:`EndpointOrigin` ('module', 'entry_point', 'builtin' or 'file').
    """
    if kind in (OriginKind.MODULE, OriginKind.ENTRY_POINT, OriginKind.BUILTIN):
        return importlib.import_module(source)
    if kind == OriginKind.FILE:
        name = _file_module_name(source)
        module = sys.modules.get(name)
        if module is None or getattr(module, "__file__", None) != source:
            module = _exec_file_module(source, name)
        return module
    raise ValueError(f"no module for endpoint source kind {kind!r}")


def check_source(path: str) -> None:
    """Execute an endpoint file once under a throw-away module name; raises what importing it raises.

    Reload on save calls it before reloading, so a file saved half-written never replaces working
    code. The file's module-level code runs once more than usual (class bodies, imports). A ``.sql``
    file is parsed instead: it raises if a statement cannot be served.
    """
    if path.endswith(".sql"):
        _sql().check_file(path)
        return
    name = "sbusr_check_" + _file_module_name(path)
    try:
        _exec_file_module(path, name)
    finally:
        sys.modules.pop(name, None)


def create_endpoint(origin: EndpointOrigin) -> Any:
    """Re-create the endpoint object described by ``origin`` (e.g. inside a worker process)."""
    kind, source, qualname = origin
    if kind in (OriginKind.MODULE, OriginKind.ENTRY_POINT, OriginKind.BUILTIN, OriginKind.FILE):
        return _resolve_qualname(module_for(kind, source), qualname)()
    if kind == OriginKind.SQL:
        return _sql().rebuild(source)
    if kind == OriginKind.LEGACY:
        errors: list[LoadError] = []
        groups = legacy_groups(source, errors)
        namespace = qualname or None
        if namespace not in groups:
            raise LookupError(f"legacy package {source} has no namespace {qualname!r}")
        return legacy_endpoint(source, namespace, groups[namespace])
    raise ValueError(f"unknown endpoint origin kind {kind!r}")


def adapter_from_origin(origin: EndpointOrigin) -> EndpointAdapter:
    return EndpointAdapter(create_endpoint(origin), origin)
