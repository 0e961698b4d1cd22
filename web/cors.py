"""CORS for the platform's browser UI: the origins of ``RFUAV_CORS_ORIGINS``, nothing else.

Starlette's ``CORSMiddleware``, answering only the configured origins: their preflights and
responses carry the allow headers (credentials and the ``Authorization`` header included);
another origin's preflight is the envelope's 400, and no answer to another origin carries an
``Access-Control-*`` header (Starlette's own adds ``Allow-Credentials`` to every answer that
has an ``Origin``). The app puts it outside the token check (``web.auth``): a browser sends its
preflight without the token.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Send

from web.errors import envelope

METHODS = ("GET", "POST", "DELETE")
#: Beyond the CORS-safelisted ones (``Content-Type`` of any value among them).
HEADERS = ("Authorization", "Content-Type", "Last-Event-ID")
#: Seconds a browser may keep a preflight's answer.
MAX_AGE = 600


class Cors(CORSMiddleware):
    """``CORSMiddleware`` for ``origins`` only (see the module docstring)."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        super().__init__(
            app,
            allow_origins=list(origins),
            allow_methods=METHODS,
            allow_headers=HEADERS,
            allow_credentials=True,
            max_age=MAX_AGE,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        # "Disallowed CORS origin, method, headers": say what, never echo the refused values.
        what = bytes(response.body).decode().removeprefix("Disallowed CORS ")
        return envelope(
            None, 400, f"CORS preflight refused: {what} not allowed (origins: RFUAV_CORS_ORIGINS; "
            f"methods: {', '.join(METHODS)}; headers: {', '.join(HEADERS)})",
            {"Vary": "Origin"},
        )  # fmt: skip

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        origin = request_headers.get("origin")
        if origin is None or self.is_allowed_origin(origin):
            await super().send(message, send, request_headers)
            return
        if message["type"] == "http.response.start":
            message.setdefault("headers", [])
            MutableHeaders(scope=message).add_vary_header("Origin")
        await send(message)
