"""The Starlette app of one service: the route table, the envelope's error handlers, the lifespan.

``create_app(settings)`` builds it: routes from ``web.routes.ROUTES`` (endpoints in
``web.endpoints``), errors mapped once to the ``{code, msg, data}`` envelope (``web.errors``),
request latency (``web.metrics``), CORS for the origins of ``RFUAV_CORS_ORIGINS`` (outside
the token check: a browser's preflight carries no token), the bearer token when one is set
(``web.auth``), and the OpenAPI document built from the same table. Its lifespan opens the control client and the event
hub and yields the ``State`` every request reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware

from protocol.serving import ROUTES_TOPIC
from protocol.settings import Settings
from web.auth import TokenMiddleware
from web.control import DEFAULT_TIMEOUT, ControlClient
from web.cors import Cors
from web.endpoints.request import State
from web.errors import EXCEPTION_HANDLERS
from web.hub import Hub
from web.metrics import LatencyMiddleware, Metrics
from web.openapi import build
from web.paths import Confinement
from web.replicas import Replicas
from web.routes import ROUTES, starlette_routes


def create_app(settings: Settings, *, control_timeout: float | None = None) -> Starlette:
    """The web app of one service. The lifespan connects to ``settings.addresses``."""
    app_metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        control = ControlClient(settings.addresses.control, timeout=control_timeout or DEFAULT_TIMEOUT)
        hub = Hub(settings.addresses.events_out)
        router = app.state.replicas = Replicas(settings.serving_timeout)
        hub.topics[ROUTES_TOPIC] = router.apply_message
        await control.start()
        await hub.start()
        app_metrics.hub = hub
        app_metrics.replicas = router
        try:
            yield State(
                settings=settings,
                control=control,
                hub=hub,
                paths=Confinement(settings.home, settings.data_roots),
                metrics=app_metrics,
            )
        finally:
            router.close()
            await hub.stop()
            await control.stop()

    app = Starlette(
        routes=starlette_routes(ROUTES),
        middleware=[
            Middleware(LatencyMiddleware, metrics=app_metrics),
            # Outside the token check: a browser's preflight carries no token.
            *([Middleware(Cors, origins=settings.cors_origins)] if settings.cors_origins else []),
            # Without a token there is nothing to check: no layer at all on the hot path.
            *([Middleware(TokenMiddleware, token=settings.api_token)] if settings.api_token else []),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.openapi = build(ROUTES, token=bool(settings.api_token))
    return app
