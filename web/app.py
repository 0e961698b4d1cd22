"""The Starlette app of one service: the route table, the envelope's error handlers, the lifespan.

``create_app(settings)`` builds it: routes from ``web.routes.ROUTES`` (endpoints in
``web.endpoints``), errors mapped once to the ``{code, msg, data}`` envelope (``web.errors``),
request latency (``web.metrics``), CORS for the origins of ``RFUAV_CORS_ORIGINS`` (outside
the token check: a browser's preflight carries no token), the bearer token when one is set
(``web.auth``), and the OpenAPI document built from the same table. Its lifespan opens the control
client, the event hub and the read view of task records (``web.view``) and yields the ``State``
every request reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware

from protocol import collector
from protocol.records import RECORDS_TOPIC
from protocol.serving import ROUTES_TOPIC
from protocol.settings import Settings
from web.auth import TokenMiddleware
from web.control import DEFAULT_TIMEOUT, ControlClient
from web.cors import Cors
from web.endpoints.request import State
from web.errors import EXCEPTION_HANDLERS
from web.figures import Figures
from web.hub import Hub
from web.metrics import LatencyMiddleware, Metrics
from web.openapi import build
from web.paths import Confinement
from web.replicas import Replicas
from web.routes import ROUTES, starlette_routes
from web.view import View


def create_app(settings: Settings, *, control_timeout: float | None = None) -> Starlette:
    """The web app of one service. The lifespan connects to ``settings.addresses``."""
    app_metrics = Metrics(Figures(share_dir(settings)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        control = ControlClient(settings.addresses.control, timeout=control_timeout or DEFAULT_TIMEOUT)
        hub = Hub(settings.addresses.events_out)
        router = app.state.replicas = Replicas(settings.serving_timeout)
        hub.topics[ROUTES_TOPIC] = router.apply_message
        view = None
        if settings.web_view_tasks > 0:
            view = View(control, settings.web_view_tasks, feed=hub)
            hub.topics[RECORDS_TOPIC] = view.on_message
            hub.on_disconnect.append(view.invalidate)
            control.on_position = view.caught_up
        await control.start()
        await hub.start()
        if view is not None:
            view.start()
        figures = app_metrics.figures
        figures.hub, figures.replicas, figures.view = hub, router, view
        figures.start()
        # Everything made so far lives as long as the process, and full collections walk only
        # what is new (``protocol.collector``): no tens-of-milliseconds pause on a request path.
        collector.install()
        try:
            yield State(
                settings=settings,
                control=control,
                hub=hub,
                view=view,
                paths=Confinement(settings.home, settings.data_roots),
                metrics=app_metrics,
            )
        finally:
            collector.uninstall()
            await figures.stop()
            if view is not None:
                view.stop()
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


def share_dir(settings: Settings) -> Path | None:
    """Where the workers of this service share their figures (``web.figures``); None with one."""
    if settings.web_workers <= 1:
        return None
    return settings.runtime_dir / f"web-{settings.port}"
