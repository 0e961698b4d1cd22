"""The Starlette app: every endpoint of API.md, each a small function over the control client.

An endpoint validates (``web.schemas``, ``web.paths``), asks the supervisor (``web.control``)
and shapes the reply in the envelope (``web.errors``). Web holds no task state: every fact comes
from the supervisor, so any number of requests may be in flight and web restarts lose nothing.
``create_app(settings)`` builds one app; its lifespan opens the control client and the event hub.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypedDict, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

import protocol
from protocol import commands as cmd
from protocol.catalog import MODELS
from protocol.replies import CommandError
from protocol.settings import Settings
from protocol.tasks import now_iso
from web import schemas
from web.control import DEFAULT_TIMEOUT, ControlClient
from web.errors import EXCEPTION_HANDLERS, ApiError, JSONEnvelope, Unavailable, envelope
from web.hub import Hub
from web.metrics import CONTENT_TYPE, LatencyMiddleware, Metrics
from web.openapi import (
    ApiRoute,
    BatchInferenceResponse,
    GpuResponse,
    HealthResponse,
    InfoResponse,
    LimitsResponse,
    ResourcesResponse,
    RunnersResponse,
    TaskActionResponse,
    TaskListResponse,
    TaskResponse,
    build,
)
from web.pages import dashboard, docs, static_routes
from web.paths import Confinement, PathRefused
from web.sse import EventStream, open_stream

log = logging.getLogger(__name__)

APP_NAME = "RFUAV Model Service"
Endpoint = Callable[[Request["State"]], Awaitable[Response]]
ModelT = TypeVar("ModelT", bound=BaseModel)
#: The largest integer a query parameter or header may carry: JavaScript's largest exact integer
#: (seq numbers and counts never come near it; SQLite would overflow past 2**63 - 1).
MAX_INT = 2**53
#: ``GET /api/v2/tasks``: tasks per page by default, and at most.
LIST_PAGE = 100
LIST_PAGE_MAX = 1000
#: ASCII digits only: ``str.isdigit`` and ``int()`` also take other scripts' digits, ``_`` and spaces.
_INTEGER = re.compile(r"-?[0-9]{1,20}")


class State(TypedDict):
    settings: Settings
    control: ControlClient
    hub: Hub
    paths: Confinement
    metrics: Metrics


# -- request helpers ------------------------------------------------------------------------
def _state(request: Request[State]) -> State:
    return request.state


async def _read_json(request: Request[State]) -> dict[str, Any]:
    """The body as a JSON object: 400 for a wrong Content-Type or bad JSON, 413 past the limit
    (by Content-Length and by the bytes actually received)."""
    limit = _state(request)["settings"].max_body_bytes
    ctype = request.headers.get("content-type", "")
    mime = ctype.split(";", 1)[0].strip().lower()
    if mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
        shown = f"'{ctype[:100]}'" if ctype else "missing"
        raise ApiError(400, f"Content-Type must be application/json (got {shown})")
    length = request.headers.get("content-length")
    if length is not None:
        if not _INTEGER.fullmatch(length.strip()) or length.strip().startswith("-"):
            raise ApiError(400, "Content-Length is not a number")
        declared = int(length)
        if declared > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise ApiError(400, "request body is empty: a JSON object is required")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


async def _validate(request: Request[State], model: type[ModelT]) -> ModelT:
    obj = await _read_json(request)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise _bad_request(schemas.validation_errors(exc)) from None


def _bad_request(errors: list[dict[str, str]]) -> ApiError:
    msg = "; ".join(f"{e['field']}: {e['error']}" for e in errors[:10])
    return ApiError(400, msg or "invalid request", {"errors": errors})


def _params(request: Request[State], build_params: Any) -> Any:
    try:
        return build_params(_state(request)["paths"])
    except PathRefused as exc:
        raise _bad_request([schemas.path_error(exc)]) from None


async def _call(request: Request[State], command: cmd.Command) -> dict[str, Any]:
    return await _state(request)["control"].call(command)


def _task_id(request: Request[State]) -> str:
    return str(request.path_params["task_id"])


# -- tasks: submission ----------------------------------------------------------------------
async def _submit_one(request: Request[State], spec: dict[str, Any]) -> Response:
    data = await _call(request, cmd.Submit(tasks=[spec]))
    return envelope(data["tasks"][0])


async def start_batch_inference(request: Request[State]) -> Response:
    req = await _validate(request, schemas.BatchInferenceRequest)
    ids = [str(uuid.uuid4()) for _ in req.source_paths]
    all_params = _params(request, lambda paths: req.params_list(paths, ids))
    specs = []
    for task_id, params in zip(ids, all_params):
        spec = req.spec("inference", "inference", params, req.device)
        spec["task_id"] = task_id
        specs.append(spec)
    data = await _call(request, cmd.Submit(tasks=specs))
    tasks = data["tasks"]
    return envelope({
        "status": "success",
        "message": f"started {len(tasks)} inference task(s)",
        "task_ids": [t["task_id"] for t in tasks],
        "total": len(tasks),
        "tasks": tasks,
    })  # fmt: skip


def _starter(model: type[schemas.TaskFields], task_type: str, job: str) -> Endpoint:
    """The endpoint that validates ``model``, confines its paths and submits one ``job`` task."""

    async def start(request: Request[State]) -> Response:
        req: Any = await _validate(request, model)
        params = _params(request, req.params)
        return await _submit_one(request, req.spec(task_type, job, params, req.device))

    start.__name__ = start.__qualname__ = f"start_{job}"
    return start


start_training = _starter(schemas.TrainingRequest, "training", "training")
start_inference = _starter(schemas.InferenceRequest, "inference", "inference")
start_split = _starter(schemas.SplitRequest, "preprocessing", "split")
start_augment = _starter(schemas.AugmentRequest, "preprocessing", "augment")
start_crop = _starter(schemas.CropRequest, "preprocessing", "crop")
_start_diagnostic = _starter(schemas.DiagnosticRequest, "diagnostic", "diagnostic")


async def start_diagnostic(request: Request[State]) -> Response:
    """The diagnostic job floods events, holds memory and ignores SIGTERM by design: served
    only where the operator turned it on."""
    if not _state(request)["settings"].diagnostic:
        raise ApiError(404, "the diagnostic job is off on this service: set RFUAV_DIAGNOSTIC=1 to serve it")
    return await _start_diagnostic(request)


# -- tasks: queries and actions -------------------------------------------------------------
async def _get(request: Request[State], task_type: str | None) -> Response:
    data = await _call(request, cmd.Get(task_id=_task_id(request), task_type=task_type))
    return envelope(data["task"])


async def get_training(request: Request[State]) -> Response:
    return await _get(request, "training")


async def get_inference(request: Request[State]) -> Response:
    return await _get(request, "inference")


async def get_preprocessing(request: Request[State]) -> Response:
    return await _get(request, "preprocessing")


async def get_task(request: Request[State]) -> Response:
    return await _get(request, None)


async def _cancel(request: Request[State], task_type: str | None, action: str, done: str) -> Response:
    task_id = _task_id(request)
    try:
        data = await _call(request, cmd.Cancel(task_id=task_id, task_type=task_type))
    except CommandError as exc:
        if exc.code != "conflict":
            raise
        return envelope({"status": "error", "message": exc.message, "task_id": task_id}, 409, exc.message)
    task = data["task"]
    if task["status"] == "cancelled":
        message = f"task {task_id} {done}"
    else:
        message = f"{action} requested: the task stops at its next safe point and ends cancelled"
    return envelope({"status": "success", "message": message, "task_id": task_id, "task": task})


async def stop_training(request: Request[State]) -> Response:
    return await _cancel(request, "training", "stop", "stopped")


async def cancel_task(request: Request[State]) -> Response:
    return await _cancel(request, None, "cancel", "cancelled")


async def delete_task(request: Request[State]) -> Response:
    task_id = _task_id(request)
    await _call(request, cmd.Delete(task_id=task_id))
    return envelope({"status": "success", "message": f"task {task_id} deleted", "task_id": task_id})


def _parse_int(raw: str, field: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """``raw`` as an integer in [minimum, maximum]; anything else is a 400 naming ``field``."""
    if not _INTEGER.fullmatch(raw):
        raise _bad_request([{"field": field, "error": "must be an integer (ASCII digits)"}])
    value = int(raw)
    if value < minimum:
        raise _bad_request([{"field": field, "error": f"must be >= {minimum}"}])
    if value > maximum:
        raise _bad_request([{"field": field, "error": f"must be <= {maximum}"}])
    return value


def _int_query(request: Request[State], name: str, default: int, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """The integer query parameter ``name``; ``default`` when absent (``?name=`` is a 400)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    return _parse_int(raw, name, minimum, maximum)


async def list_tasks(request: Request[State]) -> Response:
    status = request.query_params.get("status") or None
    task_type = request.query_params.get("task_type") or None
    limit = _int_query(request, "limit", LIST_PAGE, minimum=1, maximum=LIST_PAGE_MAX)
    raw_cursor = request.query_params.get("cursor")
    cursor = _parse_int(raw_cursor, "cursor") if raw_cursor else None
    data = await _call(request, cmd.List(task_type=task_type, status=status, limit=limit, cursor=cursor))
    groups: dict[str, list[dict[str, Any]]] = {t: [] for t in data["totals"]}
    for task in data["tasks"]:
        groups.setdefault(task["task_type"], []).append(task)
    out: dict[str, Any] = {}
    for task_type_name, tasks in groups.items():
        out[f"{task_type_name}_tasks"] = tasks
        # Every matching task, not only this page's (the seed's meaning of total_*).
        out[f"total_{task_type_name}"] = data["totals"].get(task_type_name, len(tasks))
    nxt = data["next_cursor"]
    out["next_cursor"] = None if nxt is None else str(nxt)
    out["limit"] = limit
    return envelope(out)


async def task_logs(request: Request[State]) -> Response:
    """The stored events as a JSON array (``?after=`` and ``?limit=`` page it)."""
    task_id = _task_id(request)
    after = _int_query(request, "after", 0)
    limit = _int_query(request, "limit", 100_000, minimum=1)
    events: list[Any] = []
    while len(events) < limit:
        page = await _call(request, cmd.Logs(task_id=task_id, after=after, limit=min(5000, limit - len(events))))
        got = page["events"]
        events += got
        after += len(got)
        if not got or after >= int(page.get("last_seq", 0)):
            break
    return envelope([{k: v for k, v in e.items() if k != "rseq"} for e in events])


# -- SSE ------------------------------------------------------------------------------------
def _last_event_id(request: Request[State]) -> int:
    """The seq to resume after: the ``Last-Event-ID`` header, else ``?last_event_id=``; 0 when
    neither is given or the header is empty (an EventSource whose last event id was reset)."""
    field, raw = "Last-Event-ID", request.headers.get("last-event-id", "").strip(" \t")
    if not raw:
        query = request.query_params.get("last_event_id")
        if query is None:
            return 0
        field, raw = "last_event_id", query
    if not _INTEGER.fullmatch(raw) or raw.startswith("-"):
        raise _bad_request([{"field": field, "error": "must be a non-negative integer (an event's seq)"}])
    return _parse_int(raw, field)


async def _stream(request: Request[State], task_type: str | None) -> ASGIApp:
    state = _state(request)
    task_id = _task_id(request)
    after = _last_event_id(request)
    control, hub, settings = state["control"], state["hub"], state["settings"]

    async def check() -> Any:
        return await control.call(cmd.Get(task_id=task_id, task_type=task_type))

    sub, first = await open_stream(
        task_id, after, control, lambda t: hub.subscribe(t, settings.sse_queue), check if task_type else None
    )
    if after and first.get("final") and after >= int(first.get("last_seq", 0)):
        # A reconnect after the stream's end (a browser's EventSource does this by itself, every
        # few seconds, forever): 204 is the HTML standard's signal to stop reconnecting.
        hub.unsubscribe(sub)
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    return EventStream(task_id, after, first, sub, control, settings.sse_heartbeat, hub.count_sent)


async def training_logs(request: Request[State]) -> ASGIApp:
    return await _stream(request, "training")


async def preprocessing_logs(request: Request[State]) -> ASGIApp:
    return await _stream(request, "preprocessing")


async def task_events(request: Request[State]) -> ASGIApp:
    return await _stream(request, None)


# -- resources ------------------------------------------------------------------------------
async def resources(request: Request[State]) -> Response:
    return envelope(await _call(request, cmd.Resources()))


async def gpu(request: Request[State]) -> Response:
    return envelope(await _call(request, cmd.Gpu()))


async def set_limits(request: Request[State]) -> Response:
    req = await _validate(request, schemas.LimitsRequest)
    data = await _call(request, cmd.SetLimits(limits=req.max_concurrent))
    return envelope({"status": "success", "message": "concurrency limits updated", "current_config": data["limits"]})


async def runners(request: Request[State]) -> Response:
    return envelope(await _call(request, cmd.Ps()))


# -- health, info, metrics, docs ------------------------------------------------------------
def _active(tasks: dict[str, dict[str, int]], task_type: str) -> int:
    counts = tasks.get(task_type) or {}
    return int(counts.get("pending", 0)) + int(counts.get("running", 0))


async def health(request: Request[State]) -> Response:
    state = _state(request)
    streams = state["hub"].active
    try:
        h = await state["control"].call(cmd.Health(), timeout=5.0)
    except Unavailable as exc:
        data = {
            "status": "unhealthy", "timestamp": now_iso(), "version": protocol.__version__,
            "training_tasks": 0, "inference_tasks": 0, "active_log_streams": streams,
            "resource_status": {"gpu_available": False, "gpu_count": 0}, "supervisor": "unreachable",
        }  # fmt: skip
        return envelope(data, 503, f"supervisor unavailable: {exc}")
    tasks = h.get("tasks") or {}
    return envelope({
        "status": "healthy",
        "timestamp": now_iso(),
        "version": protocol.__version__,
        "training_tasks": _active(tasks, "training"),
        "inference_tasks": _active(tasks, "inference"),
        "active_log_streams": streams,
        "resource_status": {"gpu_available": bool(h.get("gpu_available")), "gpu_count": int(h.get("gpu_count", 0))},
        # Additions.
        "supervisor": "ok",
        "running": h.get("running", 0),
        "queued": h.get("queued", 0),
        "tasks": tasks,
        "start_mode": h.get("start_mode"),
        "uptime": h.get("uptime"),
    })  # fmt: skip


async def info(request: Request[State]) -> Response:
    state = _state(request)
    settings = state["settings"]
    limits = settings.limits.get("gpu", {})
    gpu_available: bool | None
    try:
        res = await state["control"].call(cmd.Resources(), timeout=5.0)
        gpu_available = bool((res.get("gpu_info") or {}).get("available"))
        live = res.get("limits") or {}
        gpu_limits = [v for k, v in live.items() if k.startswith("cuda")]
        if gpu_limits:
            limits = gpu_limits[0]
    except (Unavailable, CommandError):
        gpu_available = False
    return envelope({
        "app_name": APP_NAME,
        "version": protocol.__version__,
        "environment": settings.environment,
        "supported_models": list(MODELS),
        "resource_limits": {
            "max_training_concurrent_gpu": int(limits.get("training", 0)),
            "max_inference_concurrent_gpu": int(limits.get("inference", 0)),
        },
        "gpu_available": gpu_available,
    })  # fmt: skip


async def metrics(request: Request[State]) -> Response:
    state = _state(request)
    try:
        snapshot: dict[str, Any] | None = await state["control"].call(cmd.Health(), timeout=5.0)
    except Unavailable:
        snapshot = None
    return Response(state["metrics"].render(snapshot), media_type=CONTENT_TYPE)


async def openapi_json(request: Request[State]) -> Response:
    return JSONEnvelope(request.app.state.openapi)


# -- route table ----------------------------------------------------------------------------
_ID = "/{task_id}"
ROUTES: list[ApiRoute] = [
    ApiRoute("POST", "/api/v2/training/start", start_training, "Start a training task", "training",
             schemas.TrainingRequest, TaskResponse, (409,)),
    ApiRoute("GET", "/api/v2/training" + _ID, get_training, "Training task status and metrics", "training",
             response=TaskResponse, errors=(404,)),
    ApiRoute("GET", "/api/v2/training" + _ID + "/logs", training_logs, "Training log stream (SSE)", "training",
             response="sse", errors=(400, 404)),
    ApiRoute("POST", "/api/v2/training" + _ID + "/stop", stop_training, "Stop a training task", "training",
             response=TaskActionResponse, errors=(404, 409)),
    ApiRoute("POST", "/api/v2/preprocessing/split", start_split, "Split a dataset into train/val/test",
             "preprocessing", schemas.SplitRequest, TaskResponse, (409,)),
    ApiRoute("POST", "/api/v2/preprocessing/augment", start_augment, "Augment a dataset", "preprocessing",
             schemas.AugmentRequest, TaskResponse, (409,)),
    ApiRoute("POST", "/api/v2/preprocessing/crop", start_crop, "Crop images", "preprocessing",
             schemas.CropRequest, TaskResponse, (409,)),
    ApiRoute("GET", "/api/v2/preprocessing" + _ID, get_preprocessing, "Preprocessing task status",
             "preprocessing", response=TaskResponse, errors=(404,)),
    ApiRoute("GET", "/api/v2/preprocessing" + _ID + "/logs", preprocessing_logs, "Preprocessing log stream (SSE)",
             "preprocessing", response="sse", errors=(400, 404)),
    ApiRoute("POST", "/api/v2/inference/start", start_inference, "Start an inference task", "inference",
             schemas.InferenceRequest, TaskResponse, (409,)),
    ApiRoute("POST", "/api/v2/inference/batch", start_batch_inference, "One inference task per source path",
             "inference", schemas.BatchInferenceRequest, BatchInferenceResponse),
    ApiRoute("GET", "/api/v2/inference" + _ID, get_inference, "Inference task status and result", "inference",
             response=TaskResponse, errors=(404,)),
    ApiRoute("POST", "/api/v2/diagnostic/start", start_diagnostic, "Start a diagnostic task (tests, operators)",
             "tasks", schemas.DiagnosticRequest, TaskResponse, (409,)),
    ApiRoute("GET", "/api/v2/tasks", list_tasks, "Tasks grouped by type, newest first, one page at a time", "tasks",
             response=TaskListResponse, errors=(400,), query=(
                 ("status", "string", "only tasks of this status"),
                 ("task_type", "string", "only tasks of this type"),
                 ("limit", "integer", f"tasks per page (1-{LIST_PAGE_MAX}, default {LIST_PAGE})", LIST_PAGE_MAX),
                 ("cursor", "string", "the next_cursor of the page before (absent: the newest tasks)"))),
    ApiRoute("GET", "/api/v2/tasks" + _ID, get_task, "Any task's details", "tasks", response=TaskResponse,
             errors=(404,)),
    ApiRoute("DELETE", "/api/v2/tasks" + _ID, delete_task, "Delete a finished task's record", "tasks",
             response=TaskActionResponse, errors=(404, 409)),
    ApiRoute("GET", "/api/v2/tasks" + _ID + "/logs", task_logs, "The task's log so far (JSON array)", "tasks",
             response="array", errors=(400, 404),
             query=(("after", "integer", "only events with seq > after"), ("limit", "integer", "at most this many"))),
    ApiRoute("GET", "/api/v2/tasks" + _ID + "/events", task_events, "Any task's event stream (SSE)", "tasks",
             response="sse", errors=(400, 404), query=(("last_event_id", "integer", "resume after this seq"),)),
    ApiRoute("POST", "/api/v2/tasks" + _ID + "/cancel", cancel_task, "Cancel any task", "tasks",
             response=TaskActionResponse, errors=(404, 409)),
    ApiRoute("GET", "/api/v2/resources", resources, "Resource usage, limits, active tasks", "resources",
             response=ResourcesResponse),
    ApiRoute("GET", "/api/v2/resources/gpu", gpu, "GPU hardware info", "resources", response=GpuResponse),
    ApiRoute("POST", "/api/v2/resources/config", set_limits, "Change concurrency limits", "resources",
             schemas.LimitsRequest, LimitsResponse),
    ApiRoute("GET", "/api/v2/runners", runners, "Live runner processes (ops)", "resources",
             response=RunnersResponse),
    ApiRoute("GET", "/api/v1/health", health, "Health check", "meta", response=HealthResponse, errors=(503,),
             auth=False),
    ApiRoute("GET", "/api/v1/info", info, "Service info", "meta", response=InfoResponse, auth=False),
    ApiRoute("GET", "/metrics", metrics, "Prometheus metrics", "meta", response="text", auth=False),
    ApiRoute("GET", "/openapi.json", openapi_json, "This document", "meta", response="raw", auth=False),
    ApiRoute("GET", "/docs", docs, "API documentation (offline Swagger UI)", "meta", response="html", auth=False),
    ApiRoute("GET", "/", dashboard, "Dashboard", "meta", response="html", auth=False),
]  # fmt: skip


# -- auth -----------------------------------------------------------------------------------
class TokenMiddleware:
    """``Authorization: Bearer <token>`` on every /api/v2 route when a token is configured."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.token and scope["path"].startswith("/api/v2"):
            given = b""
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    given = value
                    break
            scheme, _, credential = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self.token):
                reason = "missing bearer token" if not given else "wrong bearer token"
                response = envelope(None, 401, f"unauthorized: {reason} (send 'Authorization: Bearer <token>')",
                                    {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- the app --------------------------------------------------------------------------------
def create_app(settings: Settings, *, control_timeout: float | None = None) -> Starlette:
    """The web app of one service. The lifespan connects to ``settings.addresses``."""
    app_metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        control = ControlClient(settings.addresses.control, timeout=control_timeout or DEFAULT_TIMEOUT)
        hub = Hub(settings.addresses.events_out)
        await control.start()
        await hub.start()
        app_metrics.hub = hub
        try:
            yield State(
                settings=settings,
                control=control,
                hub=hub,
                paths=Confinement(settings.home, settings.data_roots),
                metrics=app_metrics,
            )
        finally:
            await hub.stop()
            await control.stop()

    # Routes are tried in order: the hottest (task lookups, what clients poll) go first.
    hot = [r for r in ROUTES if r.path.startswith("/api/v2/tasks")]
    routes: list[Any] = [Route(r.path, r.endpoint, methods=[r.method]) for r in hot + [r for r in ROUTES if r not in hot]]
    routes += static_routes()
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(LatencyMiddleware, metrics=app_metrics),
            # Without a token there is nothing to check: no layer at all on the hot path.
            *([Middleware(TokenMiddleware, token=settings.api_token)] if settings.api_token else []),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.openapi = build(ROUTES, token=bool(settings.api_token))
    return app
