"""Submitting tasks: ``POST /api/v2/<family>/start`` (and ``/inference/batch``, ``/preprocessing/*``).

Each start endpoint validates its request model (``web.schemas``), confines its paths to the data
roots and submits ``TaskSpec``s to the supervisor; the answer is the new task(s).
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from protocol import commands as cmd
from web import schemas
from web.endpoints.request import Endpoint, State, call, confined, state, validate
from web.errors import ApiError, envelope


async def _submit_one(request: Request[State], spec: dict[str, Any]) -> Response:
    data = await call(request, cmd.Submit(tasks=[spec]))
    return envelope(data["tasks"][0])


def _starter(model: type[schemas.TaskFields], task_type: str, job: str) -> Endpoint:
    """The endpoint that validates ``model``, confines its paths and submits one ``job`` task."""

    async def start(request: Request[State]) -> Response:
        req: Any = await validate(request, model)
        params = confined(request, req.params)
        return await _submit_one(request, req.spec(task_type, job, params, req.device))

    # The name is the OpenAPI operationId and the latency metric's label.
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
    if not state(request)["settings"].diagnostic:
        raise ApiError(404, "the diagnostic job is off on this service: set RFUAV_DIAGNOSTIC=1 to serve it")
    return await _start_diagnostic(request)


async def start_batch_inference(request: Request[State]) -> Response:
    """One inference task per source path, submitted together; each task's results go to a
    directory named by its own (new) id."""
    req = await validate(request, schemas.BatchInferenceRequest)
    ids = [str(uuid.uuid4()) for _ in req.source_paths]
    all_params = confined(request, lambda paths: req.params_list(paths, ids))
    specs = []
    for new_id, params in zip(ids, all_params):
        spec = req.spec("inference", "inference", params, req.device)
        spec["task_id"] = new_id
        specs.append(spec)
    data = await call(request, cmd.Submit(tasks=specs))
    tasks = data["tasks"]
    return envelope({
        "status": "success",
        "message": f"started {len(tasks)} inference task(s)",
        "task_ids": [t["task_id"] for t in tasks],
        "total": len(tasks),
        "tasks": tasks,
    })  # fmt: skip
