"""The loaded endpoints: their adapters for the RPCServer, the method index, duplicates and load errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sbusr.dispatch.adapter import EndpointAdapter, EndpointOrigin, Invoker, adapter_full_names

LOG = logging.getLogger("sbusr.dispatch")  # one logger name for operators across the package


@dataclass(frozen=True)
class Duplicate:
    name: str
    kept: EndpointOrigin
    ignored: EndpointOrigin

    def as_row(self) -> list[str]:
        """``[name, kept, ignored]`` as text: what sys.reload and a worker's Ready message carry."""
        return [self.name, str(self.kept), str(self.ignored)]


@dataclass(frozen=True)
class LoadError:
    source: str
    error: str


class Registry:
    """The loaded endpoints: ``adapters`` for the RPCServer, the method index, duplicates, errors."""

    def __init__(self, adapters: list[EndpointAdapter], errors: list[LoadError] | None = None,
                 modules: list[tuple[str, str, ModuleType]] | None = None,
                 duplicates_level: int = logging.WARNING):
        self.adapters = list(adapters)
        self.errors = list(errors or [])
        #: (kind, source, module) of every endpoint module loaded (not legacy packages): where
        #: ``@timer``/``@cron``/``@spool`` functions are found; ``duplicates_level`` is what a
        #: duplicate is logged at (a process-mode worker: DEBUG, its master reports them once)
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
                LOG.log(duplicates_level, "Method %s is offered by %s and %s; %s is used", full, kept,
                        adapter.origin, kept)

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
