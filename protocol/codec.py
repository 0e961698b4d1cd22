"""One ``encode``/``decode`` pair for every message on the wire (orjson), and one error type.

Every control message is a JSON object carrying ``v`` (the protocol version) and ``kind``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

PROTOCOL_VERSION = 1

#: A control message larger than this is refused before it is parsed.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class ProtocolError(ValueError):
    """A message that cannot be decoded or does not fit its record.

    ``code`` is a stable error code (see ``protocol.replies.ErrorCode``).
    """

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encode(obj: Any) -> bytes:
    """Encode a record (dataclass) or plain JSON value to bytes."""
    return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS)


def decode_object(data: bytes) -> dict[str, Any]:
    """Parse bytes into a JSON object, refusing oversized or non-object input."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes",
            code="too_large",
        )
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def as_dict(record: Any) -> dict[str, Any]:
    """A record as a plain dict (shallow for speed; nested records stay as they are)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


_SCALARS: dict[Any, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "dict[str, Any]": (dict,),
    "list[str]": (list,),
    "list[dict[str, Any]]": (list,),
    "dict[str, dict[str, int]]": (dict,),
}


def build(cls: type, fields: dict[str, Any], *, where: str) -> Any:
    """Construct dataclass ``cls`` from ``fields``, checking each value against its annotation.

    Annotations are read as strings (``from __future__ import annotations``); ``X | None``
    admits ``None``. Unknown keys are refused so that a typo never passes silently.
    """
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ProtocolError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, field in known.items():
        if name not in fields:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{where}: field '{name}' is required")
            continue
        value = fields[name]
        annotation = str(field.type)
        optional = annotation.endswith(" | None")
        base = annotation.removesuffix(" | None")
        if value is None:
            if not optional:
                raise ProtocolError(f"{where}: field '{name}' must not be null")
        elif base.startswith("Literal["):
            allowed = [a.strip().strip("'\"") for a in base[8:-1].split(",")]
            if value not in allowed:
                raise ProtocolError(f"{where}: field '{name}' must be one of {allowed}, got {value!r}")
        elif base in _SCALARS:
            types = _SCALARS[base]
            bad_bool = isinstance(value, bool) and bool not in types
            if bad_bool or not isinstance(value, types):
                raise ProtocolError(
                    f"{where}: field '{name}' must be {base}, got {type(value).__name__}"
                )
        values[name] = value
    return cls(**values)
