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


# -- serving (contract/SERVING.md) -----------------------------------------------------------
class ServingModelInfo(_Open):
    model: str
    num_classes: int
    image_size: int
    class_names: list[str]
    cfg_path: str
    weight_path: str


class ServingSettingsInfo(_Open):
    replicas: int
    threads: int
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue: int
    cache_size: int
    top_k: int


class ReplicaInfo(_Open):
    pid: int | None
    device: str
    status: str = Field(description="loading, ready or draining")
    restarts: int = Field(description="restarts of this replica's slot")


class DeploymentStats(_Open):
    requests: int
    errors: int
    batches: int
    mean_batch_size: float
    p50_ms: float | None = Field(description="over the last minute (null: no request yet)")
    p99_ms: float | None
    cache_hits: int
    queued: int
    # Additions.
    requests_per_s: float | None = Field(None, description="over the last minute")


class Deployment(_Open):
    name: str
    task_id: str = Field(description="the deployment's task (type serving)")
    status: str = Field(description="loading, ready, reloading, failed, stopped")
    version: int = Field(description="1 at deploy, + 1 per reload")
    device: str
    model: ServingModelInfo
    settings: ServingSettingsInfo
    replicas: list[ReplicaInfo]
    stats: DeploymentStats
    # Additions.
    restarts: int | None = Field(None, description="replica restarts of the current version")
    reason: str | None = Field(None, description="why it failed")


class DeploymentList(_Open):
    deployments: list[Deployment]


class TopClass(_Open):
    class_: int = Field(alias="class", description="the class index")
    name: str
    probability: float


class PredictionResult(_Open):
    prediction: list[float] = Field(description="softmax probabilities of every class, in class order")
    top_class: int
    class_name: str
    top_k: list[TopClass]
    batch_size: int = Field(description="the size of the forward pass that answered")
    cached: bool
    latency_ms: float


class Prediction(PredictionResult):
    model: str = Field(description="the deployment's name")
    version: int


class PredictionBatch(_Open):
    results: list[PredictionResult] = Field(description="in input order")
    model: str
    version: int


class ArticlePrediction(_Open):
    """The article's ``/predict`` answer (no envelope)."""

    prediction: list[list[float]]


class ArticleBatch(_Open):
    """The article's ``/predict_batch`` answer (no envelope)."""

    results: list[list[float]]


class ArticleError(_Open):
    """The article's routes' error answer (FastAPI's shape, no envelope)."""

    detail: str


class ErrorDetail(BaseModel):
    field: str
    error: str


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    TaskResponse, TaskActionResponse, BatchInferenceResponse, TaskListResponse, LogEvent,
    ResourcesResponse, GpuResponse, LimitsResponse, RunnersResponse, HealthResponse,
    InfoResponse, ErrorDetail, Deployment, DeploymentList, Prediction, PredictionBatch, ArticlePrediction,
    ArticleBatch, ArticleError,
)  # fmt: skip
