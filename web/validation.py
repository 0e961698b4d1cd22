"""How a refused request reads: pydantic's errors and refused paths as ``[{field, error}]``.

Every entry names the field (dotted for nested ones: ``source_paths.2``, ``max_concurrent.cpu.training``)
and says what it must be, in words a client can act on; a value is never echoed (a token is
secret). A model-level check that names its field as ``"field: reason"`` is split accordingly.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from web.paths import PathRefused

_TYPE_NAMES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "list_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "none_required": "is not accepted here",
    "missing": "is required",
    "int_parsing": "must be an integer",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
}


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _reason(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind in _TYPE_NAMES:
        return _TYPE_NAMES[kind]
    if kind == "greater_than_equal":
        return f"must be >= {_num(ctx.get('ge'))}"
    if kind == "greater_than":
        return f"must be > {_num(ctx.get('gt'))}"
    if kind == "less_than_equal":
        return f"must be <= {_num(ctx.get('le'))}"
    if kind == "less_than":
        return f"must be < {_num(ctx.get('lt'))}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "value_error":
        return str(ctx.get("error") or err.get("msg", "is invalid"))
    return str(err.get("msg", "is invalid"))


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """``[{field, error}]`` for every violation. Values are never echoed (a token is secret)."""
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in err.get("loc", ()))
        reason = _reason(dict(err))
        # A model-level check names its field as "field: reason".
        if not field and ": " in reason:
            field, reason = reason.split(": ", 1)
        out.append({"field": field or "body", "error": reason})
    return out


def path_error(exc: PathRefused) -> dict[str, str]:
    return {"field": exc.field, "error": exc.reason}
