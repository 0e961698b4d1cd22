"""The ``{code, msg, data}`` envelope, and the one place errors become responses.

Every JSON response goes through ``envelope``; every error raised while handling a request is
mapped here (``exception_handlers``) so that a client always sees the envelope with ``code`` equal
to the HTTP status — never a bare Starlette error page and never a 500 for anything it sent.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from protocol.replies import CommandError

log = logging.getLogger(__name__)

_REASONS: dict[int, str] = {
    400: "bad request",
    401: "unauthorized",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    413: "request body too large",
    500: "internal error",
    503: "service unavailable",
}


class ApiError(Exception):
    """An error answered as ``{code: status, msg, data}`` (``data`` defaults to ``{}``)."""

    def __init__(self, status: int, msg: str, data: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.data = {} if data is None else data
        self.headers = headers


class Unavailable(Exception):
    """The supervisor did not answer (down, restarting, or too slow): answered as 503."""


class JSONEnvelope(Response):
    """A JSON response (orjson), with ``application/json`` as media type."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def envelope_bytes(data: Any) -> bytes:
    """A success envelope's body, encoded (``envelope``'s, for an answer kept as bytes)."""
    return orjson.dumps({"code": 200, "msg": "", "data": data}, option=orjson.OPT_NON_STR_KEYS)


def envelope(data: Any = None, status: int = 200, msg: str = "", headers: dict[str, str] | None = None) -> Response:
    """The contract's envelope: ``code`` equals the HTTP status, ``data`` is ``{}`` when empty."""
    body = {"code": status, "msg": msg, "data": {} if data is None else data}
    return JSONEnvelope(body, status_code=status, headers=headers)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return envelope(exc.data, exc.status, exc.msg, exc.headers)


async def handle_command_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CommandError)
    status = exc.http_status
    if status >= 500:
        log.error("supervisor error on %s %s: %s (%s)", request.method, request.url.path, exc.message, exc.code)
    return envelope(None, status, exc.message or _REASONS.get(status, "error"))


async def handle_unavailable(request: Request, exc: Exception) -> Response:
    return envelope(None, 503, f"supervisor unavailable: {exc}")


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        msg = f"no route for {request.method} {request.url.path}"
    elif status == 405:
        msg = f"method {request.method} not allowed on {request.url.path}"
    else:
        msg = exc.detail if isinstance(exc.detail, str) else _REASONS.get(status, "error")
    headers = dict(exc.headers) if exc.headers else None
    return envelope(None, status, msg, headers)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # Last resort: a bug of ours. Logged with the traceback; the client still gets the envelope.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return envelope(None, 500, f"internal error: {type(exc).__name__}")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: handle_api_error,
    CommandError: handle_command_error,
    Unavailable: handle_unavailable,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
