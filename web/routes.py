"""The route table: every endpoint, once, with what is served and how it is documented.

``ROUTES`` feeds both Starlette (``starlette_routes``) and the OpenAPI document
(``web.openapi.build``), so the document cannot drift from what is served. A row's endpoint
function's name is its OpenAPI ``operationId`` and its latency metric's label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.routing import BaseRoute, Route

from web import schemas
from web.endpoints import meta, resources, starts, streams, tasks
from web.pages import dashboard, docs, static_routes
from web.responses import (
    ArticleBatch,
    ArticlePrediction,
    BatchInferenceResponse,
    Deployment,
    DeploymentList,
    GpuResponse,
    HealthResponse,
    InfoResponse,
    LimitsResponse,
    Prediction,
    PredictionBatch,
    ResourcesResponse,
    RunnersResponse,
    TaskActionResponse,
    TaskListResponse,
    TaskResponse,
)
from web.serving import endpoints as serving
from web.serving.schemas import (
    ArticleBatchRequest,
    ArticlePredictRequest,
    DeployRequest,
    PredictBatchRequest,
    PredictRequest,
    ReloadRequest,
)

#: A query parameter: (name, type, description), or (name, "integer", description, maximum).
QueryParam = tuple[str, str, str] | tuple[str, str, str, int]


@dataclass(frozen=True, kw_only=True)
class ApiRoute:
    """One endpoint: what is served and how it is documented."""

    method: str
    path: str
    endpoint: Callable[..., Any]
    summary: str
    #: The OpenAPI tag; ``"meta"`` routes answer without the supervisor (no 503 documented).
    tag: str
    #: The request model of a JSON body (400 and 413 documented).
    body: type[BaseModel] | None = None
    #: A model, ``"array"`` (a JSON array of events), ``"sse"``, ``"text"``, ``"html"`` or ``"raw"``.
    response: Any = None
    #: Error statuses beyond the ones every such route has (see ``web.openapi``).
    errors: tuple[int, ...] = ()
    #: Whether the bearer token guards it (every /api/v2 route; ``web.auth``).
    auth: bool = True
    query: tuple[QueryParam, ...] = ()
    #: False: ``response`` (a model) is the whole answer and errors are ``{"detail": ...}`` (the
    #: article's routes), not the ``{code, msg, data}`` envelope.
    envelope: bool = True
    #: Media types of raw bodies the route takes beside a JSON ``body`` (e.g. ``image/png``).
    raw_media: tuple[str, ...] = ()


_ID = "/{task_id}"
_NAME = "/api/v2/serving/{name}"
_IMAGES = ("image/png", "image/jpeg")
_TASKS_QUERY: tuple[QueryParam, ...] = (
    ("status", "string", "only tasks of this status"),
    ("task_type", "string", "only tasks of this type"),
    ("limit", "integer", f"tasks per page (1-{tasks.LIST_PAGE_MAX}, default {tasks.LIST_PAGE})", tasks.LIST_PAGE_MAX),
    ("cursor", "string", "the next_cursor of the page before (absent: the newest tasks)"),
)
_LOGS_QUERY: tuple[QueryParam, ...] = (
    ("after", "integer", "only events with seq > after"),
    ("limit", "integer", "at most this many"),
)

ROUTES: list[ApiRoute] = [
    # -- training
    ApiRoute(method="POST", path="/api/v2/training/start", endpoint=starts.start_training,
             summary="Start a training task", tag="training",
             body=schemas.TrainingRequest, response=TaskResponse, errors=(409,)),
    ApiRoute(method="GET", path="/api/v2/training" + _ID, endpoint=tasks.get_training,
             summary="Training task status and metrics", tag="training",
             response=TaskResponse, errors=(404,)),
    ApiRoute(method="GET", path="/api/v2/training" + _ID + "/logs", endpoint=streams.training_logs,
             summary="Training log stream (SSE)", tag="training",
             response="sse", errors=(400, 404)),
    ApiRoute(method="POST", path="/api/v2/training" + _ID + "/stop", endpoint=tasks.stop_training,
             summary="Stop a training task", tag="training",
             response=TaskActionResponse, errors=(404, 409)),
    # -- preprocessing
    ApiRoute(method="POST", path="/api/v2/preprocessing/split", endpoint=starts.start_split,
             summary="Split a dataset into train/val/test", tag="preprocessing",
             body=schemas.SplitRequest, response=TaskResponse, errors=(409,)),
    ApiRoute(method="POST", path="/api/v2/preprocessing/augment", endpoint=starts.start_augment,
             summary="Augment a dataset", tag="preprocessing",
             body=schemas.AugmentRequest, response=TaskResponse, errors=(409,)),
    ApiRoute(method="POST", path="/api/v2/preprocessing/crop", endpoint=starts.start_crop,
             summary="Crop images", tag="preprocessing",
             body=schemas.CropRequest, response=TaskResponse, errors=(409,)),
    ApiRoute(method="GET", path="/api/v2/preprocessing" + _ID, endpoint=tasks.get_preprocessing,
             summary="Preprocessing task status", tag="preprocessing",
             response=TaskResponse, errors=(404,)),
    ApiRoute(method="GET", path="/api/v2/preprocessing" + _ID + "/logs", endpoint=streams.preprocessing_logs,
             summary="Preprocessing log stream (SSE)", tag="preprocessing",
             response="sse", errors=(400, 404)),
    # -- inference
    ApiRoute(method="POST", path="/api/v2/inference/start", endpoint=starts.start_inference,
             summary="Start an inference task", tag="inference",
             body=schemas.InferenceRequest, response=TaskResponse, errors=(409,)),
    ApiRoute(method="POST", path="/api/v2/inference/batch", endpoint=starts.start_batch_inference,
             summary="One inference task per source path", tag="inference",
             body=schemas.BatchInferenceRequest, response=BatchInferenceResponse),
    ApiRoute(method="GET", path="/api/v2/inference" + _ID, endpoint=tasks.get_inference,
             summary="Inference task status and result", tag="inference",
             response=TaskResponse, errors=(404,)),
    # -- any task
    ApiRoute(method="POST", path="/api/v2/diagnostic/start", endpoint=starts.start_diagnostic,
             summary="Start a diagnostic task (tests, operators)", tag="tasks",
             body=schemas.DiagnosticRequest, response=TaskResponse, errors=(409,)),
    ApiRoute(method="GET", path="/api/v2/tasks", endpoint=tasks.list_tasks,
             summary="Tasks grouped by type, newest first, one page at a time", tag="tasks",
             response=TaskListResponse, errors=(400,), query=_TASKS_QUERY),
    ApiRoute(method="GET", path="/api/v2/tasks" + _ID, endpoint=tasks.get_task,
             summary="Any task's details", tag="tasks",
             response=TaskResponse, errors=(404,)),
    ApiRoute(method="DELETE", path="/api/v2/tasks" + _ID, endpoint=tasks.delete_task,
             summary="Delete a finished task's record", tag="tasks",
             response=TaskActionResponse, errors=(404, 409)),
    ApiRoute(method="GET", path="/api/v2/tasks" + _ID + "/logs", endpoint=tasks.task_logs,
             summary="The task's log so far (JSON array)", tag="tasks",
             response="array", errors=(400, 404), query=_LOGS_QUERY),
    ApiRoute(method="GET", path="/api/v2/tasks" + _ID + "/events", endpoint=streams.task_events,
             summary="Any task's event stream (SSE)", tag="tasks",
             response="sse", errors=(400, 404), query=(("last_event_id", "integer", "resume after this seq"),)),
    ApiRoute(method="POST", path="/api/v2/tasks" + _ID + "/cancel", endpoint=tasks.cancel_task,
             summary="Cancel any task", tag="tasks",
             response=TaskActionResponse, errors=(404, 409)),
    # -- serving (contract/SERVING.md)
    ApiRoute(method="POST", path="/api/v2/serving/deploy", endpoint=serving.deploy,
             summary="Deploy a trained model (replica processes, dynamic batching)", tag="serving",
             body=DeployRequest, response=Deployment, errors=(404, 409)),
    ApiRoute(method="GET", path="/api/v2/serving", endpoint=serving.list_deployments,
             summary="The deployments", tag="serving", response=DeploymentList),
    ApiRoute(method="GET", path=_NAME, endpoint=serving.get_deployment,
             summary="One deployment: status, replicas, live figures", tag="serving",
             response=Deployment, errors=(404,)),
    ApiRoute(method="DELETE", path=_NAME, endpoint=serving.undeploy,
             summary="Undeploy: stop taking requests, answer those in flight, stop the replicas", tag="serving",
             response=Deployment, errors=(404,)),
    ApiRoute(method="POST", path=_NAME + "/reload", endpoint=serving.reload,
             summary="Swap in new weights with zero downtime (version + 1); no body: the same files again",
             tag="serving", body=ReloadRequest, response=Deployment, errors=(404, 409)),
    ApiRoute(method="POST", path=_NAME + "/predict", endpoint=serving.predict,
             summary="One prediction (JSON forms, or a raw image/png or image/jpeg body)", tag="serving",
             body=PredictRequest, response=Prediction, errors=(404, 503), raw_media=_IMAGES),
    ApiRoute(method="POST", path=_NAME + "/predict_batch", endpoint=serving.predict_batch,
             summary="Several predictions in input order", tag="serving",
             body=PredictBatchRequest, response=PredictionBatch, errors=(404, 503)),
    ApiRoute(method="POST", path="/predict", endpoint=serving.article_predict,
             summary="The article's /predict (RFUAV_DEFAULT_DEPLOYMENT or the only deployment)", tag="serving",
             body=ArticlePredictRequest, response=ArticlePrediction, errors=(404, 503), envelope=False),
    ApiRoute(method="POST", path="/predict_batch", endpoint=serving.article_predict_batch,
             summary="The article's /predict_batch", tag="serving",
             body=ArticleBatchRequest, response=ArticleBatch, errors=(404, 503), envelope=False),
    # -- resources
    ApiRoute(method="GET", path="/api/v2/resources", endpoint=resources.resources,
             summary="Resource usage, limits, active tasks", tag="resources", response=ResourcesResponse),
    ApiRoute(method="GET", path="/api/v2/resources/gpu", endpoint=resources.gpu,
             summary="GPU hardware info", tag="resources", response=GpuResponse),
    ApiRoute(method="POST", path="/api/v2/resources/config", endpoint=resources.set_limits,
             summary="Change concurrency limits", tag="resources",
             body=schemas.LimitsRequest, response=LimitsResponse),
    ApiRoute(method="GET", path="/api/v2/runners", endpoint=resources.runners,
             summary="Live runner processes (ops)", tag="resources", response=RunnersResponse),
    # -- meta: no token
    ApiRoute(method="GET", path="/api/v1/health", endpoint=meta.health, summary="Health check", tag="meta",
             response=HealthResponse, errors=(503,), auth=False),
    ApiRoute(method="GET", path="/api/v1/info", endpoint=meta.info, summary="Service info", tag="meta",
             response=InfoResponse, auth=False),
    ApiRoute(method="GET", path="/metrics", endpoint=meta.metrics, summary="Prometheus metrics", tag="meta",
             response="text", auth=False),
    ApiRoute(method="GET", path="/openapi.json", endpoint=meta.openapi_json, summary="This document", tag="meta",
             response="raw", auth=False),
    ApiRoute(method="GET", path="/docs", endpoint=docs, summary="API documentation (offline Swagger UI)",
             tag="meta", response="html", auth=False),
    ApiRoute(method="GET", path="/", endpoint=dashboard, summary="Dashboard", tag="meta",
             response="html", auth=False),
]  # fmt: skip


def starlette_routes(routes: list[ApiRoute]) -> list[BaseRoute]:
    """Starlette's routes for ``routes``, then the static files (``web.pages``)."""
    # Routes are tried in order: the hottest (task lookups, what clients poll) go first.
    hot = [r for r in routes if r.path.startswith("/api/v2/tasks")]
    ordered = hot + [r for r in routes if r not in hot]
    served: list[BaseRoute] = [Route(r.path, r.endpoint, methods=[r.method]) for r in ordered]
    return served + static_routes()
