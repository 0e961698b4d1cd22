"""What a browser loads: the dashboard (``/``), the offline API docs (``/docs``), the icon
(``/favicon.ico``) and the static files under ``/static`` (``web/static``).

``/`` and ``/docs`` are rows of the route table (web/routes.py); ``static_routes()`` adds the rest,
which the OpenAPI document leaves out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
ICON = '<link rel="icon" type="image/svg+xml" href="/favicon.ico">'

_DOCS_HTML = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RFUAV Model Service — API</title>
{ICON}
<link rel="stylesheet" href="/static/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static/docs/swagger-ui-bundle.js"></script>
<script src="/static/docs/init.js"></script>
</body></html>"""

_PLACEHOLDER = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RFUAV Model Service</title>
{ICON}</head>
<body><h1>RFUAV Model Service</h1>
<p>The dashboard is not installed (web/static/dashboard/index.html is missing).</p>
<p>API documentation: <a href="/docs">/docs</a> · health: <a href="/api/v1/health">/api/v1/health</a></p>
</body></html>"""


async def docs(request: Request[Any]) -> Response:
    return HTMLResponse(_DOCS_HTML)


async def dashboard(request: Request[Any]) -> Response:
    index = STATIC_DIR / "dashboard" / "index.html"
    if index.is_file():
        return FileResponse(index, media_type="text/html")
    return HTMLResponse(_PLACEHOLDER)


async def favicon(request: Request[Any]) -> Response:
    """The icon browsers ask for by themselves (an SVG: every current browser takes one); a 404
    there is a console error on every page."""
    return FileResponse(
        STATIC_DIR / "favicon.svg", media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
    )


def static_routes() -> list[BaseRoute]:
    return [
        Route("/favicon.ico", favicon, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
