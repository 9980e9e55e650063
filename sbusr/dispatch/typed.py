"""Typed params: a method's annotated parameters are validated (and converted) with pydantic.

:func:`validator_for` runs once per method when its endpoint is loaded and returns None for a method
without annotations, which then pays nothing per call. pydantic is imported only when some method
has annotations. Validation is pydantic's default ("lax") mode: ``"5"`` becomes ``5`` for an
``int``, a JSON object becomes the annotated pydantic model or dataclass, ``"abc"`` is refused.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable
from typing import Any

from sbusr.jsonrpc.errors import MAX_ERROR_TEXT, InvalidParams, cut

LOG = logging.getLogger("sbusr.dispatch")

#: (bound arguments by name) -> None; converts the values in place, raises InvalidParams
Validator = Callable[[dict[str, Any]], None]


def type_hints(fn: Any) -> dict[str, Any]:
    """The resolved annotations of ``fn`` (through wrappers such as the legacy adapter's)."""
    return typing.get_type_hints(inspect.unwrap(fn), include_extras=True)


def is_checked(hint: Any) -> bool:
    """True for an annotation worth checking (``Any`` and ``object`` accept everything)."""
    return hint is not Any and hint is not object


def type_label(hint: Any) -> str:
    """How an error message names a type: ``int``, ``Order``, ``list[int]``, ``int | None``."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return repr(hint).replace("typing.", "")


def _param_type(param: inspect.Parameter, hint: Any) -> Any:
    if param.kind is inspect.Parameter.VAR_POSITIONAL:
        return tuple[hint, ...]
    if param.kind is inspect.Parameter.VAR_KEYWORD:
        return dict[str, hint]
    return hint


def validator_for(full_name: str, fn: Any, sig: inspect.Signature) -> Validator | None:
    """The validator of ``fn``'s params (``sig``: its signature without ctxt); None if none is annotated."""
    annotated = [p for p in sig.parameters.values() if p.annotation is not inspect.Parameter.empty]
    if not annotated:
        return None
    try:
        hints = type_hints(fn)
    except Exception as exc:  # a forward reference that names nothing, say
        LOG.warning("Method %s: cannot resolve its annotations (%s); its params are not checked",
                    full_name, exc)
        return None
    from pydantic import TypeAdapter

    checks: dict[str, tuple[Any, str]] = {}
    for param in annotated:
        hint = hints.get(param.name)
        if hint is None or not is_checked(hint):
            continue
        try:
            checks[param.name] = (TypeAdapter(_param_type(param, hint)), type_label(hint))
        except Exception as exc:
            LOG.warning("Method %s: parameter %r has a type pydantic cannot check (%s); not checked",
                        full_name, param.name, exc)
    if not checks:
        return None
    return _make_validator(full_name, checks)


def _make_validator(full_name: str, checks: dict[str, tuple[Any, str]]) -> Validator:
    from pydantic import ValidationError

    def validate(arguments: dict[str, Any]) -> None:
        for name, value in arguments.items():
            check = checks.get(name)
            if check is None:
                continue
            adapter, label = check
            try:
                arguments[name] = adapter.validate_python(value)
            except ValidationError as exc:
                raise _invalid(full_name, name, label, exc) from None

    return validate


def _invalid(full_name: str, name: str, label: str, exc: Any) -> InvalidParams:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    where = ".".join(str(part) for part in first["loc"])
    detail = f"{where}: {first['msg']}" if where else first["msg"]
    message = f"Invalid params for {full_name}: parameter {name!r} must be {label} ({detail})"
    data = {"param": name, "expected": label,
            "errors": [{"loc": [name, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]}
    return InvalidParams(cut(message, MAX_ERROR_TEXT), data)
