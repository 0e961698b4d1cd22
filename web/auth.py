"""The bearer token: ``Authorization: Bearer <token>`` on every /api/v2 route when one is set.

An ASGI middleware, not a check in each endpoint, so no /api/v2 route can forget it; the app
adds it only when ``RFUAV_API_TOKEN`` is set (no layer at all on the hot path otherwise). The
comparison is constant-time; a refusal is the envelope's 401 with ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from web.errors import envelope

#: Paths under this prefix need the token; the rest (health, info, metrics, docs, pages) do not.
#: The API and the article's prediction routes (``/predict``, ``/predict_batch``).
PROTECTED_PREFIX = ("/api/v2", "/predict")


class TokenMiddleware:
    """Refuses a /api/v2 request without the configured bearer token (401)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.token and scope["path"].startswith(PROTECTED_PREFIX):
            given = _authorization(scope)
            scheme, _, credential = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.token):
                reason = "missing bearer token" if not given else "wrong bearer token"
                response = envelope(None, 401, f"unauthorized: {reason} (send 'Authorization: Bearer <token>')",
                                    {"WWW-Authenticate": "Bearer"})  # fmt: skip
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _authorization(scope: Scope) -> bytes:
    """The first ``Authorization`` header's value, or b""."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return bytes(value)
    return b""
