"""Run the web app under uvicorn on ``settings.host:settings.port``: one process, or several workers.

``run(settings)`` blocks until SIGINT/SIGTERM (uvicorn installs and restores the handlers). On
shutdown uvicorn stops accepting, then waits up to ``GRACEFUL_SHUTDOWN`` seconds for open
responses — SSE streams included — before it closes them; SSE clients resume with
``Last-Event-ID``.

``RFUAV_WEB_WORKERS`` above 1: uvicorn's process manager binds the port once and starts that many
worker processes (``worker_app``), replacing one that dies. The workers share nothing: each reads
the settings from the same environment and opens its own control client, event socket, read
view (``web.view``) and SSE clients; the kernel spreads connections over them. A write made
through a worker is in that worker's next read; the others see it once its record reaches them
(published before the write's reply was sent, so normally before the client's next request).
"""

from __future__ import annotations

import logging
import shutil

import uvicorn
from starlette.applications import Starlette

from protocol.settings import Settings
from web.app import create_app, share_dir

#: Seconds uvicorn waits for open responses (SSE streams) on shutdown.
GRACEFUL_SHUTDOWN = 5
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def config(settings: Settings) -> uvicorn.Config:
    workers = settings.web_workers
    return uvicorn.Config(
        # Several workers: each builds its own app (``worker_app``) in its own process.
        "web.server:worker_app" if workers > 1 else create_app(settings),
        factory=workers > 1,
        host=settings.host,
        port=settings.port,
        workers=workers,
        lifespan="on",
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        server_header=False,
        proxy_headers=False,
    )


def worker_app() -> Starlette:
    """The app of one worker process: the settings read again from the same environment."""
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format=_LOG_FORMAT)
    return create_app(settings)


def run(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format=_LOG_FORMAT)
    cfg = config(settings)
    logging.getLogger(__name__).info(
        "starting web on http://%s:%d (%d worker%s)",
        settings.host,
        settings.port,
        cfg.workers,
        "s" if cfg.workers > 1 else "",
    )
    shared = share_dir(settings)
    if shared is not None:
        shutil.rmtree(shared, ignore_errors=True)  # a previous run's workers' figures
    if cfg.workers > 1:
        from uvicorn.supervisors import Multiprocess

        Multiprocess(cfg, sockets=[cfg.bind_socket()]).run()
    else:
        uvicorn.Server(cfg).run()
