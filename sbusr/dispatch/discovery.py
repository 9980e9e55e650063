"""Discovery: the OpenRPC document (https://spec.open-rpc.org) of every method a registry serves.

``rpc.discover`` returns it and sbusr-api serves it at ``GET /api/methods``. Each method is described
from its code: the summary and description from its docstring, each parameter's name, whether it is
required, and a JSON Schema from its annotation (``{}`` without one), and the result's schema from
the return annotation. A method (or a callable other code serves, such as SQL methods) may carry an
``__openrpc__`` dict: its keys replace the derived ones (``params``, ``result``, ``summary``...).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import sbusr
from sbusr.dispatch import typed

LOG = logging.getLogger("sbusr.dispatch")

OPENRPC_VERSION = "1.3.2"
#: where a model's schema lives in the document; parameters refer to it with "$ref"
REF_TEMPLATE = "#/components/schemas/{model}"
OPENRPC_ATTR = "__openrpc__"


def _schema(hint: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema of an annotation (models go to ``schemas``); {} when it has none or pydantic has none."""
    if hint is inspect.Parameter.empty or not typed.is_checked(hint):
        return {}
    try:
        from pydantic import TypeAdapter

        schema = TypeAdapter(hint).json_schema(ref_template=REF_TEMPLATE)
    except Exception as exc:
        LOG.debug("no JSON Schema for %r: %s", hint, exc)
        return {}
    schemas.update(schema.pop("$defs", {}))
    title = schema.get("title")
    if isinstance(hint, type) and schema.get("type") == "object" and isinstance(title, str):
        schemas[title] = schema  # a model or dataclass: described once, referred to by each use
        return {"$ref": REF_TEMPLATE.format(model=title)}
    return schema


def _param_structure(sig: inspect.Signature) -> str:
    kinds = {p.kind for p in sig.parameters.values()}
    if inspect.Parameter.POSITIONAL_ONLY in kinds or inspect.Parameter.VAR_POSITIONAL in kinds:
        return "by-position" if inspect.Parameter.KEYWORD_ONLY not in kinds else "either"
    if inspect.Parameter.KEYWORD_ONLY in kinds:
        return "by-name"
    return "either"


def describe_method(name: str, fn: Any, sig: inspect.Signature, schemas: dict[str, Any]) -> dict[str, Any]:
    """The OpenRPC method object of ``fn`` served as ``name`` (``sig``: its signature without ctxt)."""
    try:
        hints = typed.type_hints(fn)
    except Exception:
        hints = {}
    method: dict[str, Any] = {"name": name}
    doc = inspect.getdoc(fn)
    if doc:
        summary, _, rest = doc.partition("\n\n")
        method["summary"] = " ".join(summary.split())
        if rest.strip():
            method["description"] = rest.strip()
    params = []
    for param in sig.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        schema = _schema(hints.get(param.name, inspect.Parameter.empty), schemas)
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            params.append({"name": param.name, "required": False,
                           "schema": {"type": "array", "items": schema}})
            continue
        required = param.default is inspect.Parameter.empty
        params.append({"name": param.name, "required": required, "schema": schema})
    method["params"] = params
    method["result"] = {"name": "result", "schema": _schema(hints.get("return", inspect.Parameter.empty),
                                                            schemas)}
    structure = _param_structure(sig)
    if structure != "either":
        method["paramStructure"] = structure
    override = getattr(fn, OPENRPC_ATTR, None)
    if isinstance(override, dict):
        method.update(override)
    return method


def openrpc_document(registry: Any, title: str = "sbusr", namespace: str | None = None) -> dict[str, Any]:
    """The OpenRPC document of every method ``registry`` serves (the first of duplicates, sorted by
    name); with ``namespace``, of that namespace's methods only ("" for those without one)."""
    schemas: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]] = {}
    for adapter in registry.adapters:
        for served in adapter.target.accepted_namespaces:
            if namespace is not None and (served or "") != namespace:
                continue
            for short, (fn, sig) in sorted(adapter._specs.items()):
                full = f"{served}.{short}" if served else short
                if full not in methods:
                    methods[full] = describe_method(full, fn, sig, schemas)
    document: dict[str, Any] = {
        "openrpc": OPENRPC_VERSION,
        "info": {"title": title, "version": sbusr.__version__,
                 "description": "JSON-RPC 2.0 methods served over SmartBus by sbusr-server"},
        "methods": [methods[name] for name in sorted(methods)],
    }
    if schemas:
        document["components"] = {"schemas": schemas}
    return document
