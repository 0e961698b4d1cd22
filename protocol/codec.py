"""One ``encode``/``decode`` pair for every message on the wire (orjson), and one error type.

Every control message is a JSON object carrying ``v`` (the protocol version) and ``kind``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
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


class _Mismatch(Exception):
    """A value (``got``, at ``path`` inside the field) that does not fit its annotation."""

    def __init__(self, got: Any, path: str) -> None:
        super().__init__(path)
        self.got = got
        self.path = path


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """``cls``'s annotations resolved to types (aliases, ``X | None``, ``Literal``), once."""
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    """An annotation as a message names it: ``int``, ``dict[str, Any]``, ``str | None``."""
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + repr(list(typing.get_args(tp)))
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


@functools.cache
def _shape(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """``(typing.get_origin(tp), typing.get_args(tp))``, worked out once per annotation (they
    cost microseconds each, and every field of every command asks)."""
    return typing.get_origin(tp), typing.get_args(tp)


def _check(value: Any, tp: Any, path: str, where: str) -> Any:
    """``value`` checked against ``tp`` (recursively), as the record stores it: a list becomes
    a tuple for ``tuple[...]``, an int a float for ``float``, an object a nested record.
    Raises ``_Mismatch`` naming the innermost value that does not fit."""
    if tp is Any:
        return value
    if tp is str:  # the commonest annotation first
        if not isinstance(value, str):
            raise _Mismatch(value, path)
        return value
    origin, args = _shape(tp)
    if origin is typing.Literal:
        # ``type(...) is``: True == 1, but a Literal[1] field does not take true.
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _Mismatch(value, path)
    if origin is typing.Union or origin is types.UnionType:
        for arm in args:
            try:
                return _check(value, arm, path, where)
            except (_Mismatch, ProtocolError):
                continue
        raise _Mismatch(value, path)
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch(value, path)
    if origin is list:
        if type(value) is not list:
            raise _Mismatch(value, path)
        (item,) = args or (Any,)
        return [_check(v, item, f"{path}[{i}]", where) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch(value, path)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(v, args[0], f"{path}[{i}]", where) for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Mismatch(value, path)
        return tuple(_check(v, a, f"{path}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if type(value) is not dict:
            raise _Mismatch(value, path)
        key_tp, value_tp = args or (Any, Any)
        if key_tp is Any and value_tp is Any:
            return value
        if value_tp is Any and key_tp is str and all(type(k) is str for k in value):
            return value  # the commonest dict (a job's params): keys checked without a copy
        out: dict[Any, Any] = {}
        for k, v in value.items():
            out[_check(k, key_tp, f"{path}[{k!r}] (key)", where)] = _check(v, value_tp, f"{path}[{k!r}]", where)
        return out
    if tp is bool:
        if type(value) is not bool:
            raise _Mismatch(value, path)
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Mismatch(value, path)
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Mismatch(value, path)
        try:
            return float(value)
        except OverflowError:
            raise _Mismatch(value, path) from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if type(value) is not dict:
            raise _Mismatch(value, path)
        return build(tp, value, where=f"{where}: field '{path}'")
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise _Mismatch(value, path)
        return value
    raise TypeError(f"{where}: field '{path}': unsupported annotation {tp!r}")  # a bug in a record


def build(cls: type, fields: dict[str, Any], *, where: str) -> Any:
    """Construct dataclass ``cls`` from ``fields``, checking each value against its type.

    Annotations are resolved (``typing.get_type_hints``): aliases, ``X | None``, ``Literal``,
    ``list``/``tuple``/``dict`` items and nested records are all checked. A value that does
    not fit, a missing required field and an unknown key (a typo never passes silently) are a
    ``ProtocolError`` (``bad_request``) naming the field.
    """
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ProtocolError(f"{where}: unknown field(s) {', '.join(unknown)}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, field in known.items():
        if name not in fields:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{where}: field '{name}' is required")
            continue
        value = fields[name]
        tp = hints[name]
        try:
            values[name] = _check(value, tp, name, where)
        except _Mismatch as exc:
            if value is None:
                raise ProtocolError(f"{where}: field '{name}' must not be null") from None
            got = type(exc.got).__name__ if exc.path == name else f"{type(exc.got).__name__} at {exc.path}"
            if typing.get_origin(tp) is typing.Literal and exc.path == name:
                got = repr(value)
            raise ProtocolError(f"{where}: field '{name}' must be {_describe(tp)}, got {got}") from None
    return cls(**values)
