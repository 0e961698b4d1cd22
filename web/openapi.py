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
    query: tuple[tuple[str, str, str], ...] = field(default=())  # (name, type, description)


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
        op: dict[str, Any] = {
            "summary": r.summary,
            "tags": [r.tag],
            "operationId": r.endpoint.__name__ + ("" if r.method == "GET" else "_" + r.method.lower()),
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(r.path)
        ]
        for name, kind, about in r.query:
            params.append({"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": about})
        if r.response == "sse":
            params.append({
                "name": "Last-Event-ID", "in": "header", "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
                "description": "resume after this event id (seq)",
            })  # fmt: skip
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{r.body.__name__}"}}},
            }
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


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
