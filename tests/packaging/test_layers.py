"""Layers import downward only: the layer order of sbusr's modules, written once, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "sbusr"

#: Bottom-up. A module may import from its own part and from any part of a lower layer; the parts of
#: one layer know nothing of each other. Every sbusr module belongs to the part with its longest prefix.
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"package": ("sbusr",)},  # the version, nothing else
    {"utilities": ("sbusr.util",)},  # rate-limited logging, child processes: no sbusr imports
    {"bus": ("sbusr.smartbus",),  # codec, development bus, bus clients, the vendor binding
     "metrics": ("sbusr.metrics",)},  # Prometheus metrics and the rolling window: transport-neutral
    {"options": ("sbusr.opts",), "json-rpc": ("sbusr.jsonrpc",)},  # JSON-RPC framing and its oslo mapping
    # one SmartBus link per identity (connection, its exchanges, peers, standby, embedded bus), the
    # replies to a request packet, flow starts, the senders of an RPCClient, smartbus:// URLs
    {"transport": ("sbusr.transport",),
     # what endpoint code imports: @limits, @timer/@cron, @spool; no bus, no server
     "method kit": ("sbusr.decorators", "sbusr.execution.limits", "sbusr.timers", "sbusr.spooler.jobs")},
    {"sql": ("sbusr.sql",)},  # SQL methods from .sql files: statements, pools, their endpoints
    {"driver": ("sbusr.driver_smartbus",),  # the oslo.messaging driver
     "dispatch": ("sbusr.dispatch",)},  # endpoint adapters, registry, loading
    # the built-in endpoints (sys.timers finds timers via dispatch; sbusr.timer.run runs each tick)
    {"endpoints": ("sbusr.endpoints",)},
    # the execution layer wires the sys.* endpoints to its state (process mode: in master and workers)
    # execution learns which call it runs from the dispatcher (dispatch.current_call), never from the
    # driver; the process-mode master writes its replies with sbusr.transport.replies
    {"execution": ("sbusr.execution",),
     "scheduler": ("sbusr.timers.scheduler",),  # when timers are due
     "reload on save": ("sbusr.server.reload_on_save",),
     "configuration": ("sbusr.config",),  # config files, start-up checks (the transport's URL rules), reload
     "http api": ("sbusr.api",)},
    {"spooler": ("sbusr.spooler",)},  # spooler processes: jobs run with the workers' worker_init
    {"background": ("sbusr.server.background",)},  # sbusr-server's timers, spooler and reload on save
    {"services": ("sbusr.server",)},  # sbusr-server's thread- and process-mode services
    # siblings: the benchmark and the test kit for method writers share only util.procs
    {"benchmarks": ("sbusr.bench",), "testing": ("sbusr.testing",)},
    {"project template": ("sbusr.scaffold",)},  # what sbusr-init writes
    {"programs": ("sbusr.cmd",)},
]


def _part(module: str) -> tuple[int, str] | None:
    """(layer index, part name) of ``module``: the part with the longest matching prefix."""
    matches = [(len(prefix), index, name) for index, layer in enumerate(LAYERS)
               for name, prefixes in layer.items() for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1:] if matches else None


def _modules() -> dict[str, Path]:
    """Every sbusr module (a package by its own name) and its file."""
    found = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(module: str, source: str, known: dict[str, Path]) -> set[str]:
    """The sbusr modules ``source`` (the text of ``module``) imports, at any depth (lazy imports too)."""
    is_package = module in known and known[module].name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            imported.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {name for name in imported if name == "sbusr" or name.startswith("sbusr.")}


def back_edges(module: str, source: str, known: dict[str, Path]) -> set[tuple[str, str]]:
    """(module, imported) pairs where ``module`` imports a module of a sibling part or a higher layer."""
    own = _part(module)
    assert own is not None, f"{module} is in no layer: add it to LAYERS"
    edges = set()
    for target in imported_modules(module, source, known):
        theirs = _part(target)
        assert theirs is not None, f"{module} imports {target}, which is in no layer"
        if theirs != own and theirs[0] >= own[0]:
            edges.add((module, target))
    return edges


def test_modules_import_only_from_lower_layers():
    modules = _modules()
    found = set()
    for module, path in sorted(modules.items()):
        found |= back_edges(module, path.read_text(encoding="utf-8"), modules)
    assert found == set(), "imports from a layer above or from a sibling part"


def test_the_check_sees_upward_sideways_and_lazy_imports():
    known = _modules()
    assert back_edges("sbusr.smartbus.codec", "import sbusr.api\n", known) == {
        ("sbusr.smartbus.codec", "sbusr.api")}
    lazy_sideways = "def f():\n    from sbusr.dispatch import adapter\n"
    assert back_edges("sbusr.driver_smartbus", lazy_sideways, known) == {
        ("sbusr.driver_smartbus", "sbusr.dispatch.adapter")}
    relative = "from . import registry\nfrom .. import jsonrpc\nfrom sbusr import __version__\n"
    assert back_edges("sbusr.dispatch.loading", relative, known) == set()
    assert back_edges("sbusr.api", "from sbusr import cmd\n", known) == {("sbusr.api", "sbusr.cmd")}


def test_execution_learns_its_call_from_the_dispatcher_not_the_transport():
    """Only a process-mode worker imports the driver (to build its RPCServer's transport over its link
    to the master): thread mode and the limits run under any oslo.messaging transport, and the master
    is plumbing that writes its replies with sbusr.transport.replies over its own connection."""
    known = _modules()
    users = {module for module, path in known.items() if module.startswith("sbusr.execution")
             and "sbusr.driver_smartbus" in imported_modules(module, path.read_text(encoding="utf-8"), known)}
    assert users == {"sbusr.execution.worker.serve"}


def test_the_test_kit_does_not_import_the_benchmark():
    """A method writer's tests load sbusr.testing; the benchmark is a program of its own."""
    known = _modules()
    users = {module for module, path in known.items() if module.startswith("sbusr.testing")
             and any(name == "sbusr.bench" or name.startswith("sbusr.bench.")
                     for name in imported_modules(module, path.read_text(encoding="utf-8"), known))}
    assert users == set()
