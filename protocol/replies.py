"""Replies (supervisor → web/CLI): one envelope for every command.

``{"v": 1, "id": "<request id>", "ok": true, "data": {...}}`` or
``{"v": 1, "id": ..., "ok": false, "error": {"code": "<stable code>", "message": "..."}}``.
Error codes are stable and map to HTTP statuses in one table (``HTTP_STATUS``). Either may carry
``"at": [epoch, rev]``, the position of the supervisor's task records when it answered
(``protocol.records``): a read view that has reached it reflects everything the request changed.
"""

from __future__ import annotations

from typing import Any

from protocol.codec import PROTOCOL_VERSION, ProtocolError, decode_object


class ErrorCode:
    BAD_REQUEST = "bad_request"
    BAD_VERSION = "bad_version"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


HTTP_STATUS: dict[str, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.BAD_VERSION: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class CommandError(Exception):
    """A command that the supervisor refused: ``code`` is an ``ErrorCode``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


#: Where a reply was answered in the supervisor's record changes: ``(epoch, rev)``.
Position = tuple[str, int]


def ok(request_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "data": data}


def error(request_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }


def parse_reply(data: bytes) -> tuple[str | None, dict[str, Any] | CommandError]:
    """Decode a reply into ``(request_id, data)``, or ``(request_id, CommandError)`` for an
    error reply (returned, not raised, so the caller can route it by id)."""
    request_id, result, _ = parse_reply_at(data)
    return request_id, result


def parse_reply_at(data: bytes) -> tuple[str | None, dict[str, Any] | CommandError, Position | None]:
    """``parse_reply`` and the reply's ``at`` (None when absent or malformed)."""
    obj = decode_object(data)
    at = obj.get("at")
    position: Position | None = None
    if isinstance(at, list) and len(at) == 2 and isinstance(at[0], str) and type(at[1]) is int:
        position = (at[0], at[1])
    request_id, result = _result(obj)
    return request_id, result, position


def _result(obj: dict[str, Any]) -> tuple[str | None, dict[str, Any] | CommandError]:
    request_id = obj.get("id")
    if not (request_id is None or isinstance(request_id, str)):
        raise ProtocolError("reply id must be a string")
    if obj.get("ok") is True and isinstance(obj.get("data"), dict):
        return request_id, obj["data"]
    err = obj.get("error")
    if obj.get("ok") is False and isinstance(err, dict):
        code = str(err.get("code", ErrorCode.INTERNAL))
        return request_id, CommandError(code, str(err.get("message", "")))
    raise ProtocolError("malformed reply")
