"""The serving request models (``contract/SERVING.md``): strict types, unknown fields refused."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol import serving as sv
from web.fields import check_device
from web.paths import Confinement

_STRICT = ConfigDict(strict=True, extra="forbid")


class _Source(BaseModel):
    model_config = _STRICT

    from_task: str | None = Field(None, description="a completed training task: its best.pth and config.yaml")
    cfg_path: str | None = Field(None, description="a training's config.yaml (with weight_path)")
    weight_path: str | None = Field(None, description="its weights, e.g. best.pth (with cfg_path)")

    def paths(self, paths: Confinement) -> dict[str, Any]:
        """The source, its local paths confined to the data roots."""
        return {
            "from_task": self.from_task,
            "cfg_path": None if self.cfg_path is None else paths.resolve("cfg_path", self.cfg_path, must_exist=True),
            "weight_path": None
            if self.weight_path is None
            else paths.resolve("weight_path", self.weight_path, must_exist=True),
        }


class DeployRequest(_Source):
    """POST /api/v2/serving/deploy."""

    name: str = Field(pattern=sv.NAME_RE.pattern, description="the deployment's name, unique")
    device: str = Field("cuda", description="cpu, cuda or cuda:N (cuda without a GPU: the CPU, with a warning)")
    replicas: int = Field(1, ge=1, le=64)
    threads: int | None = Field(None, ge=1, le=1024, description="torch threads per replica (CPU: cores ÷ replicas)")
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_batch_delay_ms: float = Field(5.0, ge=0, le=1000, allow_inf_nan=False)
    max_queue: int = Field(256, ge=1, le=1_000_000)
    cache_size: int = Field(1024, ge=0, le=1_000_000)
    top_k: int = Field(5, ge=1, le=1000)
    replace: bool = False

    _device = field_validator("device")(check_device)

    @model_validator(mode="after")
    def _one_source(self) -> DeployRequest:
        if self.from_task is not None and (self.cfg_path is not None or self.weight_path is not None):
            raise ValueError("give either from_task or cfg_path and weight_path, not both")
        if self.from_task is None and (self.cfg_path is None or self.weight_path is None):
            raise ValueError("give from_task, or cfg_path and weight_path")
        return self

    def settings(self) -> dict[str, Any]:
        return self.model_dump(exclude={"from_task", "cfg_path", "weight_path"})


class ReloadRequest(_Source):
    """POST /api/v2/serving/{name}/reload (no source: the same files again)."""

    @model_validator(mode="after")
    def _one_source(self) -> ReloadRequest:
        if self.from_task is not None and (self.cfg_path is not None or self.weight_path is not None):
            raise ValueError("give either from_task or cfg_path and weight_path, not both")
        if (self.cfg_path is None) != (self.weight_path is None):
            raise ValueError("cfg_path and weight_path go together")
        return self


class PredictRequest(BaseModel):
    """POST /api/v2/serving/{name}/predict: exactly one of these (or a raw image/png, image/jpeg
    body). Documentation only: the replica reads the body."""

    model_config = ConfigDict(extra="forbid")

    input: list[Any] | None = Field(None, description="a model-ready float tensor (3, S, S), used as is")
    image: list[Any] | None = Field(None, description="pixels (H, W, 3) or (H, W), integers 0-255")
    image_base64: str | None = Field(None, description="a PNG or JPEG file's bytes, base64")
    path: str | None = Field(None, description="an image file inside the data roots")


class PredictBatchRequest(BaseModel):
    """POST /api/v2/serving/{name}/predict_batch: exactly one of these lists. Documentation only."""

    model_config = ConfigDict(extra="forbid")

    batch_inputs: list[Any] | None = Field(None, description="tensors as `input` (the article's field)")
    images: list[Any] | None = None
    images_base64: list[str] | None = None
    paths: list[str] | None = None


class ArticlePredictRequest(BaseModel):
    """POST /predict (the article's shape). Documentation only."""

    input: list[Any]


class ArticleBatchRequest(BaseModel):
    """POST /predict_batch (the article's shape). Documentation only."""

    batch_inputs: list[Any]
