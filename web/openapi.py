"""The OpenAPI 3.1 document, generated from the route table and the pydantic models.

``ApiRoute`` is one row of the route table (web/app.py builds its Starlette routes from the
same rows, so the document cannot drift from what is served). Request bodies come from
``web.schemas``; response shapes (documentation only: the supervisor builds them) are the models
below. Every JSON response is documented inside the ``{code, msg, data}`` envelope.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

import protocol


@dataclass(frozen=True)
class ApiRoute:
    """One endpoint: what is served and how it is documented."""

    method: str
    path: str
    endpoint: Callable[..., Any]
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    #: A model, ``"array"`` (a JSON array of events), ``"sse"``, ``"text"``, ``"html"`` or ``"raw"``.
    response: Any = None
    errors: tuple[int, ...] = ()
    auth: bool = True
    #: (name, type, description), or (name, "integer", description, maximum)
    query: tuple[tuple[str, str, str] | tuple[str, str, str, int], ...] = field(default=())


# -- response models (documentation) -------------------------------------------------------
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class LatestMetrics(_Open):
    epoch: int | None = None
    total_epochs: int | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    macro_f1: float | None = None
    micro_f1: float | None = None
    mAP: float | None = None
    top1_acc: float | None = None
    top3_acc: float | None = None
    top5_acc: float | None = None
    precision: float | None = None
    recall: float | None = None
    learning_rate: float | None = None
    best_acc: float | None = None


class TaskResponse(_Open):
    task_id: str
    task_type: str = Field(description="training, inference, preprocessing (or diagnostic)")
    status: str = Field(description="pending, running, completed, failed, cancelled")
    message: str
    progress: int
    device: str
    priority: int
    description: str | None
    current_epoch: int | None
    total_epochs: int | None
    latest_metrics: LatestMetrics | None
    duration: float
    strategy_type: str | None
    res: dict[str, Any] | None
    created_at: str
    updated_at: str


class TaskActionResponse(_Open):
    status: str = Field(description="success or error")
    message: str
    task_id: str


class BatchInferenceResponse(_Open):
    status: str
    message: str
    task_ids: list[str]
    total: int


class TaskListResponse(_Open):
    training_tasks: list[TaskResponse]
    inference_tasks: list[TaskResponse]
    preprocessing_tasks: list[TaskResponse]
    total_training: int
    total_inference: int
    total_preprocessing: int
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last page")
    limit: int | None = None


class LogEvent(_Open):
    seq: int
    timestamp: str
    level: str
    message: str
    kind: str
    metrics: dict[str, Any] | None = None
    step: int | None = None
    stage: str | None = None


class ResourcesResponse(_Open):
    device_usage: dict[str, dict[str, int]]
    active_tasks: dict[str, list[dict[str, Any]]]
    limits: dict[str, dict[str, int]]
    gpu_info: dict[str, Any]


class GpuResponse(_Open):
    available: bool
    count: int
    cuda_version: str | None
    pytorch_version: str | None
    devices: list[dict[str, Any]]


class LimitsResponse(_Open):
    status: str
    message: str
    current_config: dict[str, dict[str, int]]


class RunnersResponse(_Open):
    runners: list[dict[str, Any]]


class HealthResponse(_Open):
    status: str = Field(description="healthy or unhealthy")
    timestamp: str
    version: str
    training_tasks: int
    inference_tasks: int
    active_log_streams: int
    resource_status: dict[str, Any]


class InfoResponse(_Open):
    app_name: str
    version: str
    environment: str
    supported_models: list[str]
    resource_limits: dict[str, int]
    gpu_available: bool


class ErrorDetail(BaseModel):
    field: str
    error: str


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    TaskResponse, TaskActionResponse, BatchInferenceResponse, TaskListResponse, LogEvent,
    ResourcesResponse, GpuResponse, LimitsResponse, RunnersResponse, HealthResponse,
    InfoResponse, ErrorDetail,
)  # fmt: skip

#: One request body per model, shown in the docs; paths are relative to RFUAV_HOME (the default
#: data root) and must exist where the model says so.
BODY_EXAMPLES: dict[str, dict[str, Any]] = {
    "TrainingRequest": {"model": "resnet18", "num_classes": 2, "train_path": "data/train", "val_path": "data/val",
                        "save_path": "models", "name": "run1", "num_epochs": 5, "device": "cpu"},
    "InferenceRequest": {"cfg_path": "models/run1/config.yaml", "weight_path": "models/run1/best.pth",
                         "source_path": "data/val", "device": "cpu"},
    "BatchInferenceRequest": {"cfg_path": "models/run1/config.yaml", "weight_path": "models/run1/best.pth",
                              "source_paths": ["data/val", "data/train"], "device": "cpu"},
    "SplitRequest": {"input_path": "data/raw", "output_path": "data/split", "train_ratio": 0.7, "val_ratio": 0.2},
    "AugmentRequest": {"dataset_path": "data/train", "output_path": "data/train-aug", "methods": ["CLAHE", "GaussNoise"]},
    "CropRequest": {"input_path": "data/raw", "output_path": "data/cropped", "x": 0, "y": 0, "width": 224, "height": 224},
    "DiagnosticRequest": {"events": 10, "rate": 10},
    "LimitsRequest": {"max_concurrent": {"cpu": {"training": 1}}},
}  # fmt: skip
#: Integer query parameters take ASCII digits in this range (web.app answers 400 otherwise).
MAX_QUERY_INT = 2**53

_ERROR_TEXT = {
    400: "bad request: a field is missing, of the wrong type or out of range (data.errors lists them)",
    401: "missing or wrong bearer token",
    404: "unknown task id, or a task of another type",
    409: "conflict: the task id exists, or the task is still live / already ended",
    413: "request body too large",
    503: "the supervisor cannot be reached",
}


def _envelope(data_schema: dict[str, Any], code: int) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["code", "msg", "data"],
        "properties": {
            "code": {"type": "integer", "const": code} if code < 300 else {"type": "integer"},
            "msg": {"type": "string"},
            "data": data_schema,
        },
    }


def _error_envelope() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["code", "msg", "data"],
        "properties": {
            "code": {"type": "integer"},
            "msg": {"type": "string"},
            "data": {
                "type": "object",
                "properties": {"errors": {"type": "array", "items": {"$ref": "#/components/schemas/ErrorDetail"}}},
            },
        },
    }


def build(routes: list[ApiRoute], *, title: str = "RFUAV Model Service", token: bool = True) -> dict[str, Any]:
    """The OpenAPI document of ``routes``."""
    bodies = sorted({r.body for r in routes if r.body is not None}, key=lambda m: m.__name__)
    models = [*bodies, *RESPONSE_MODELS]
    _, defs = models_json_schema(
        [(m, "validation" if m in bodies else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "tags": [r.tag], "operationId": _operation_id(r)}
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(r.path)
        ]
        for name, kind, about, *most in r.query:
            schema: dict[str, Any] = {"type": kind}
            if kind == "integer":
                schema.update(minimum=1 if name == "limit" else 0, maximum=most[0] if most else MAX_QUERY_INT)
            params.append({"name": name, "in": "query", "required": False, "schema": schema, "description": about})
        if r.response == "sse":
            params.append({
                "name": "Last-Event-ID", "in": "header", "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]{0,15}$"},
                "description": "resume after this event id (seq); empty: from the start",
            })  # fmt: skip
        if params:
            op["parameters"] = params
        if r.body is not None:
            content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{r.body.__name__}"}}
            if r.body.__name__ in BODY_EXAMPLES:
                content["example"] = BODY_EXAMPLES[r.body.__name__]
            op["requestBody"] = {"required": True, "content": {"application/json": content}}
        responses: dict[str, Any] = {}
        if r.response == "sse":
            responses["200"] = {
                "description": "text/event-stream: `id: <seq>` and `data: <event JSON>` per event; ends after the final status",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            }
        elif r.response == "text":
            responses["200"] = {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
        elif r.response == "html":
            responses["200"] = {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
        elif r.response == "raw":
            responses["200"] = {"description": "JSON document", "content": {"application/json": {"schema": {"type": "object"}}}}
        else:
            if r.response == "array":
                data: dict[str, Any] = {"type": "array", "items": {"$ref": "#/components/schemas/LogEvent"}}
            elif isinstance(r.response, type):
                data = {"$ref": f"#/components/schemas/{r.response.__name__}"}
            else:
                data = {"type": "object"}
            responses["200"] = {"description": "success", "content": {"application/json": {"schema": _envelope(data, 200)}}}
            links = _links(r, routes)
            if links:
                responses["200"]["links"] = links
        errors = set(r.errors)
        if r.body is not None:
            errors |= {400, 413}
        if r.auth and token:
            errors.add(401)
        if r.tag != "meta":
            errors.add(503)
        for code in sorted(errors):
            responses[str(code)] = {
                "description": _ERROR_TEXT.get(code, "error"),
                "content": {"application/json": {"schema": _error_envelope()}},
            }
        op["responses"] = responses
        if r.auth and token:
            op["security"] = [{"bearer": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": protocol.__version__,
            "description": "Train and run torchvision classifiers; one isolated process per job. "
            "Every JSON response is wrapped in `{code, msg, data}`; SSE streams are not.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _operation_id(route: ApiRoute) -> str:
    return route.endpoint.__name__ + ("" if route.method == "GET" else "_" + route.method.lower())


def _links(route: ApiRoute, routes: list[ApiRoute]) -> dict[str, Any]:
    """OpenAPI links from a start endpoint's answer (the new task's id) to every route of that
    task: its typed routes (``/api/v2/training/{task_id}``…) and the ``/api/v2/tasks`` ones."""
    if route.method != "POST" or route.response not in (TaskResponse, BatchInferenceResponse):
        return {}
    pointer = "$response.body#/data/" + ("task_id" if route.response is TaskResponse else "task_ids/0")
    family = route.path.split("/")[3]  # /api/v2/<family>/start
    return {
        _operation_id(r): {"operationId": _operation_id(r), "parameters": {"task_id": pointer}}
        for r in routes
        if "{task_id}" in r.path and r.path.split("/")[3] in ("tasks", family)
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
