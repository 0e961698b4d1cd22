"""The OpenAPI 3.1 document, generated from the route table and the pydantic models.

``build(ROUTES)`` documents every row of ``web.routes.ROUTES`` (the same rows Starlette serves,
so the document cannot drift from what is served). Request bodies come from ``web.schemas``;
response shapes (documentation only: the supervisor builds them) from ``web.responses``. Every
JSON response is documented inside the ``{code, msg, data}`` envelope (but the article's
``/predict`` and ``/predict_batch``: ``ApiRoute.envelope``); every error status a route can
answer is listed with the error envelope.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pydantic.json_schema import models_json_schema

import protocol
from web.endpoints.request import MAX_INT
from web.responses import RESPONSE_MODELS, BatchInferenceResponse, Deployment, TaskResponse

if TYPE_CHECKING:
    from web.routes import ApiRoute

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
    "DeployRequest": {"name": "uav", "cfg_path": "models/run1/config.yaml", "weight_path": "models/run1/best.pth",
                      "device": "cpu", "replicas": 1, "max_batch_size": 16, "max_batch_delay_ms": 5},
    "ReloadRequest": {"cfg_path": "models/run1/config.yaml", "weight_path": "models/run1/best.pth"},
    "PredictRequest": {"path": "data/val/a/0.png"},
    "PredictBatchRequest": {"paths": ["data/val/a/0.png", "data/train/a/0.png"]},
}  # fmt: skip

#: Request bodies that may be left out (``POST .../reload``: the same files again).
OPTIONAL_BODIES = frozenset({"ReloadRequest"})

_ERROR_TEXT = {
    400: "bad request: a field is missing, of the wrong type or out of range (data.errors lists them)",
    401: "missing or wrong bearer token",
    404: "unknown task id, or a task of another type",
    409: "conflict: the task id exists, or the task is still live / already ended",
    413: "request body too large",
    503: "the supervisor cannot be reached",
}

#: The serving routes' own meaning of some statuses (``contract/SERVING.md``).
_SERVING_ERROR_TEXT = {
    404: "unknown deployment (deploy: from_task names no task)",
    409: "deploy: a deployment of that name exists (use replace); reload: a reload is under way",
    503: "the deployment is loading, its queue is full, or a replica died with the request in flight "
    "(retry after Retry-After seconds); or the supervisor cannot be reached",
}

_RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "string", "pattern": "^[0-9]+$"}}

#: The 200 answer of each non-JSON ``ApiRoute.response`` kind.
_PLAIN_ANSWERS: dict[str, dict[str, Any]] = {
    "sse": {
        "description": "text/event-stream: `id: <seq>` and `data: <event JSON>` per event; ends after the final status",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    "text": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
    "html": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}},
    "raw": {"description": "JSON document", "content": {"application/json": {"schema": {"type": "object"}}}},
}

_LAST_EVENT_ID = {
    "name": "Last-Event-ID", "in": "header", "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]{0,15}$"},
    "description": "resume after this event id (seq); empty: from the start",
}  # fmt: skip


def build(routes: list[ApiRoute], *, title: str = "RFUAV Model Service", token: bool = True) -> dict[str, Any]:
    """The OpenAPI document of ``routes``; ``token``: the /api/v2 routes need a bearer token."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, routes, token)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": protocol.__version__,
            "description": "Train and run torchvision classifiers; one isolated process per job. "
            "Every JSON response is wrapped in `{code, msg, data}`; SSE streams and the article's "
            "`/predict` and `/predict_batch` are not.",
        },
        "paths": paths,
        "components": {"schemas": _component_schemas(routes)},
    }
    if token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _component_schemas(routes: list[ApiRoute]) -> dict[str, Any]:
    """The JSON schemas of every request body (as validated) and response model (as sent)."""
    bodies = sorted({r.body for r in routes if r.body is not None}, key=lambda m: m.__name__)
    models = [*bodies, *RESPONSE_MODELS]
    _, defs = models_json_schema(
        [(m, "validation" if m in bodies else "serialization") for m in models],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    return schemas


def _operation(route: ApiRoute, routes: list[ApiRoute], token: bool) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary, "tags": [route.tag], "operationId": _operation_id(route)}
    params = _parameters(route)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = _request_body(route)
    op["responses"] = {**_success(route, routes), **_errors(route, token)}
    if route.auth and token:
        op["security"] = [{"bearer": []}]
    return op


def _parameters(route: ApiRoute) -> list[dict[str, Any]]:
    """Path parameters, then query parameters, then (SSE) the ``Last-Event-ID`` header."""
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_params(route.path)
    ]
    for name, kind, about, *most in route.query:
        schema: dict[str, Any] = {"type": kind}
        if kind == "integer":
            schema.update(minimum=1 if name == "limit" else 0, maximum=most[0] if most else MAX_INT)
        params.append({"name": name, "in": "query", "required": False, "schema": schema, "description": about})
    if route.response == "sse":
        params.append(copy.deepcopy(_LAST_EVENT_ID))
    return params


def _request_body(route: ApiRoute) -> dict[str, Any]:
    assert route.body is not None
    name = route.body.__name__
    content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{name}"}}
    if name in BODY_EXAMPLES:
        content["example"] = BODY_EXAMPLES[name]
    body: dict[str, Any] = {"required": name not in OPTIONAL_BODIES, "content": {"application/json": content}}
    for media in route.raw_media:  # a file's bytes as the whole body
        body["content"][media] = {"schema": {"type": "string", "format": "binary", "contentMediaType": media}}
    if route.raw_media:
        body["description"] = f"JSON (one of the fields), or the bytes of a file: {', '.join(route.raw_media)}"
    return body


def _success(route: ApiRoute, routes: list[ApiRoute]) -> dict[str, Any]:
    """The 200 answer: a plain kind's, or the envelope around the route's data (with links)."""
    if isinstance(route.response, str) and route.response in _PLAIN_ANSWERS:
        return {"200": copy.deepcopy(_PLAIN_ANSWERS[route.response])}
    if not route.envelope and isinstance(route.response, type):
        ref = {"$ref": f"#/components/schemas/{route.response.__name__}"}
        return {"200": {"description": "success (no envelope)", "content": {"application/json": {"schema": ref}}}}
    if route.response == "array":
        data: dict[str, Any] = {"type": "array", "items": {"$ref": "#/components/schemas/LogEvent"}}
    elif isinstance(route.response, type):
        data = {"$ref": f"#/components/schemas/{route.response.__name__}"}
    else:
        data = {"type": "object"}
    answer: dict[str, Any] = {
        "description": "success",
        "content": {"application/json": {"schema": _envelope(data, 200)}},
    }
    links = _links(route, routes)
    if links:
        answer["links"] = links
    return {"200": answer}


def _errors(route: ApiRoute, token: bool) -> dict[str, Any]:
    """Every error status the route can answer: its own, 400/413 with a body, 401 behind the
    token, 503 unless it answers without the supervisor (``meta``)."""
    codes = set(route.errors)
    if route.body is not None:
        codes |= {400, 413}
    if route.auth and token:
        codes.add(401)
    if route.tag != "meta":
        codes.add(503)
    texts = {**_ERROR_TEXT, **(_SERVING_ERROR_TEXT if route.tag == "serving" else {})}
    answers: dict[str, Any] = {}
    for code in sorted(codes):
        # Without the envelope (the article's routes) errors are {"detail": ...}, but the token
        # check answers before the route, in the envelope.
        schema = _error_envelope() if route.envelope or code == 401 else {"$ref": "#/components/schemas/ArticleError"}
        answers[str(code)] = {
            "description": texts.get(code, "error"),
            "content": {"application/json": {"schema": schema}},
        }
        if code == 503 and route.tag == "serving":
            answers[str(code)]["headers"] = {"Retry-After": copy.deepcopy(_RETRY_AFTER)}
    return answers


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


def _operation_id(route: ApiRoute) -> str:
    return route.endpoint.__name__ + ("" if route.method == "GET" else "_" + route.method.lower())


def _links(route: ApiRoute, routes: list[ApiRoute]) -> dict[str, Any]:
    """OpenAPI links from a start endpoint's answer (the new task's id) to every route of that
    task: its typed routes (``/api/v2/training/{task_id}``…) and the ``/api/v2/tasks`` ones."""
    if route.method == "POST" and route.response is Deployment and "{name}" not in route.path:
        # A deploy's answer names the deployment: every route of it, and its task.
        named = {
            _operation_id(r): {"operationId": _operation_id(r), "parameters": {"name": "$response.body#/data/name"}}
            for r in routes
            if "{name}" in r.path
        }
        task = {
            _operation_id(r): {
                "operationId": _operation_id(r),
                "parameters": {"task_id": "$response.body#/data/task_id"},
            }
            for r in routes
            if r.path == "/api/v2/tasks/{task_id}" and r.method == "GET"
        }
        return {**named, **task}
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
