"""Run the web app under uvicorn: one worker on ``settings.host:settings.port``.

``run(settings)`` blocks until SIGINT/SIGTERM (uvicorn installs and restores the handlers). On
shutdown uvicorn stops accepting, then waits up to ``GRACEFUL_SHUTDOWN`` seconds for open
responses — SSE streams included — before it closes them; SSE clients resume with
``Last-Event-ID``.
"""

from __future__ import annotations

import logging

import uvicorn

from protocol.settings import Settings
from web.app import create_app

#: Seconds uvicorn waits for open responses (SSE streams) on shutdown.
GRACEFUL_SHUTDOWN = 5


def config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        lifespan="on",
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        server_header=False,
        proxy_headers=False,
    )


def run(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(config(settings))
    logging.getLogger(__name__).info("starting web on http://%s:%d", settings.host, settings.port)
    server.run()
