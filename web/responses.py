"""The shapes of the API's answers, as pydantic models: documentation only.

The supervisor builds the answers; these models describe them in the OpenAPI document
(``web.openapi``), each inside the ``{code, msg, data}`` envelope. Every model is open
(``extra="allow"``): an answer may carry additions the contract does not name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
    cuda_version: str | None = Field(description="the driver's CUDA version (NVML)")
    pytorch_version: str | None
    devices: list[dict[str, Any]]
    # Additions.
    torch_cuda_version: str | None = Field(None, description="the CUDA version torch was built for (null: CPU build)")
    reason: str | None = Field(None, description="why there is no GPU (null when there is one)")
    cpu_count: int | None = Field(None, description="the host's CPU cores")


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
