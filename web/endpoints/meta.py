"""About the service itself: health, info, Prometheus metrics, the OpenAPI document.

These answer without a token, and health, info and metrics answer while the supervisor is down
(health with 503 and ``"supervisor": "unreachable"``; metrics with ``rfuav_supervisor_up 0``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from protocol import commands as cmd
from protocol.catalog import MODELS
from protocol.replies import CommandError
from protocol.tasks import now_iso
from web.endpoints.request import State, state
from web.errors import JSONEnvelope, Unavailable, envelope
from web.metrics import CONTENT_TYPE

#: Seconds health, info and metrics wait for the supervisor (less than a request's default).
_SNAPSHOT_TIMEOUT = 5.0


def _active(tasks: dict[str, dict[str, int]], task_type: str) -> int:
    counts = tasks.get(task_type) or {}
    return int(counts.get("pending", 0)) + int(counts.get("running", 0))


async def health(request: Request[State]) -> Response:
    st = state(request)
    version = st["settings"].version
    streams = int(st["metrics"].figures.total().get("streams", 0))  # every worker's
    try:
        h = await st["control"].call(cmd.Health(), timeout=_SNAPSHOT_TIMEOUT)
    except Unavailable as exc:
        data = {
            "status": "unhealthy", "timestamp": now_iso(), "version": version,
            "training_tasks": 0, "inference_tasks": 0, "active_log_streams": streams,
            "resource_status": {"gpu_available": False, "gpu_count": 0}, "supervisor": "unreachable",
        }  # fmt: skip
        return envelope(data, 503, f"supervisor unavailable: {exc}")
    tasks = h.get("tasks") or {}
    # A disk that refuses the supervisor's writes: nothing new can be stored (what it did is
    # kept in memory until the disk takes it: ``writes_waiting``).
    refused = h.get("writes_refused")
    return envelope({
        "status": "unhealthy" if refused else "healthy",
        "timestamp": now_iso(),
        "version": version,
        "training_tasks": _active(tasks, "training"),
        "inference_tasks": _active(tasks, "inference"),
        "active_log_streams": streams,
        "resource_status": {"gpu_available": bool(h.get("gpu_available")), "gpu_count": int(h.get("gpu_count", 0))},
        # Additions.
        "supervisor": f"the disk refuses its writes: {refused}" if refused else "ok",
        "writes_waiting": h.get("writes_waiting", 0),
        "running": h.get("running", 0),
        "queued": h.get("queued", 0),
        "tasks": tasks,
        "start_mode": h.get("start_mode"),
        "uptime": h.get("uptime"),
        "executor": h.get("executor"),
    }, 503 if refused else 200, f"the supervisor's disk refuses writes: {refused}" if refused else "")  # fmt: skip


async def info(request: Request[State]) -> Response:
    st = state(request)
    settings = st["settings"]
    limits = settings.limits.get("gpu", {})
    gpu_available: bool | None
    try:
        res = await st["control"].call(cmd.Resources(), timeout=_SNAPSHOT_TIMEOUT)
        gpu_available = bool((res.get("gpu_info") or {}).get("available"))
        live = res.get("limits") or {}
        gpu_limits = [v for k, v in live.items() if k.startswith("cuda")]
        if gpu_limits:
            limits = gpu_limits[0]
    except (Unavailable, CommandError):
        gpu_available = False
    return envelope({
        "app_name": settings.app_name,
        "version": settings.version,
        "environment": settings.environment,
        "supported_models": list(settings.supported_models or MODELS),
        "resource_limits": {
            "max_training_concurrent_gpu": int(limits.get("training", 0)),
            "max_inference_concurrent_gpu": int(limits.get("inference", 0)),
        },
        "gpu_available": gpu_available,
    })  # fmt: skip


async def _figures(request: Request[State], command: Any) -> dict[str, Any] | None:
    """The supervisor's answer to ``command``, or None when it cannot give one now."""
    try:
        answer: dict[str, Any] = await state(request)["control"].call(command, timeout=_SNAPSHOT_TIMEOUT)
    except (Unavailable, CommandError):
        return None
    return answer


async def metrics(request: Request[State]) -> Response:
    snapshot, deployed = await asyncio.gather(_figures(request, cmd.Health()), _figures(request, cmd.Deployments()))
    views = (deployed or {}).get("deployments")
    body = state(request)["metrics"].render(snapshot, views if isinstance(views, list) else None)
    return Response(body, media_type=CONTENT_TYPE)


async def openapi_json(request: Request[State]) -> Response:
    """The document ``web.app.create_app`` built from the route table."""
    return JSONEnvelope(request.app.state.openapi)
