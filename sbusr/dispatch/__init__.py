"""Endpoints for oslo.messaging's RPCDispatcher: adapters, the registry, loading.

* :mod:`~sbusr.dispatch.adapter` -- :class:`EndpointAdapter`, which lets the dispatcher call only an
  endpoint's public methods with bound params, and :class:`AccessPolicy`;
* :mod:`~sbusr.dispatch.registry` -- the loaded endpoints (:class:`Registry`);
* :mod:`~sbusr.dispatch.loading` -- loading them from modules, folders, legacy packages and entry
  points (:func:`load_endpoints`, :func:`reload`) and re-creating one in a worker;
* :mod:`~sbusr.dispatch.legacy` -- original-sbusr ``methods`` packages as endpoints.

* :mod:`~sbusr.dispatch.server` -- the RPCServer with sbusr's :class:`Dispatcher` (:func:`rpc_server`):
  one log line per failed call, :func:`current_call` for the execution layer, and
  ``Dispatcher.replace_endpoints`` to swap in a reloaded registry.
"""

from sbusr.dispatch.adapter import (
    RESERVED_NAMES,
    AccessPolicy,
    EndpointAdapter,
    EndpointOrigin,
    Invoker,
    adapter_full_names,
    adapter_methods,
    direct_invoke,
)
from sbusr.dispatch.loading import (
    ENTRY_POINT_GROUP,
    SYSTEM_ENDPOINT_MODULE,
    adapter_from_origin,
    check_source,
    create_endpoint,
    is_system_endpoint,
    load_endpoints,
    module_for,
    reload,
)
from sbusr.dispatch.registry import Duplicate, LoadError, Registry
from sbusr.dispatch.server import Dispatcher, caller_of, current_call, rpc_server, serving

__all__ = [
    "ENTRY_POINT_GROUP",
    "RESERVED_NAMES",
    "SYSTEM_ENDPOINT_MODULE",
    "AccessPolicy",
    "Dispatcher",
    "Duplicate",
    "EndpointAdapter",
    "EndpointOrigin",
    "Invoker",
    "LoadError",
    "Registry",
    "adapter_from_origin",
    "adapter_full_names",
    "adapter_methods",
    "caller_of",
    "check_source",
    "create_endpoint",
    "current_call",
    "direct_invoke",
    "is_system_endpoint",
    "load_endpoints",
    "module_for",
    "reload",
    "rpc_server",
    "serving",
]
