"""Request models (pydantic v2, strict types) and their translation into ``TaskSpec`` params.

Contracts:

- Field names, defaults and ranges are API.md's; additions (marked below, listed in README's
  "Jobs") are optional with defaults. Numbers also have generous upper bounds (no 10^18 epochs),
  so no value can overflow the store's 64-bit integers. Shared fields and checks: ``web.fields``.
- A violation becomes a 400 naming every offending field (``web.validation``).
- ``params(paths)`` returns the job's params with every local path resolved and confined
  (``web.paths``); it raises ``PathRefused`` for the first refused path of each field.
- The CLI (``web.cli``) builds its options from these models: a field's type, whether it is
  required, and its name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from protocol.catalog import AUGMENT_METHODS, FIXED_INPUT_SIZE, MIN_INPUT_SIZE, MODEL_SET, MODELS
from protocol.tasks import DEVICE_RE
from web.fields import STRICT, TaskFields, UploadFields, check_device, check_name, settings_of
from web.paths import Confinement

__all__ = [
    "AugmentRequest",
    "BatchInferenceRequest",
    "CropRequest",
    "DiagnosticRequest",
    "InferenceFields",
    "InferenceRequest",
    "LimitsRequest",
    "SplitRequest",
    "TaskFields",
    "TrainingRequest",
]


class TrainingRequest(TaskFields, UploadFields):
    """POST /api/v2/training/start (API.md §3.1)."""

    priority_setting = "default_train_priority"

    model: str = Field(description="torchvision classification model name")
    num_classes: int = Field(ge=1, le=100_000)
    train_path: str = Field(description="ImageFolder directory, .zip of one, or http(s) URL")
    val_path: str = Field(description="validation set, same forms as train_path")
    save_path: str = Field(description="output directory (local)")
    name: str | None = Field(None, description="sub-directory appended to save_path")
    batch_size: int = Field(8, ge=1, le=65_536)
    num_epochs: int = Field(100, ge=1, le=1_000_000)
    learning_rate: float = Field(0.0001, gt=0)
    image_size: int = Field(224, ge=32, le=8192)
    device: str = "cuda"
    weight_path: str = Field("", description="initial weights: local path, .zip or URL; '' for none")
    pretrained: bool = True
    shuffle: bool = True
    strategy_type: str | None = Field(None, description="passed through, echoed in responses")
    priority: int = Field(5, ge=1, le=10, description="1-10, higher runs first (default: RFUAV_DEFAULT_TRAIN_PRIORITY)")
    # Additions to API.md.
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    deterministic: bool = False
    augment: bool = Field(True, description="mild train-time augmentation")
    num_workers: int | None = Field(None, ge=0, le=256, description="override the DataLoader workers")

    _device = field_validator("device")(check_device)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str, info: ValidationInfo) -> str:
        settings = settings_of(info)
        supported = settings.supported_models if settings is not None else ()
        if supported and value not in supported:
            shown = "unknown" if value not in MODEL_SET else "unsupported"
            raise ValueError(f"{shown} model '{value[:64]}'; this service supports: {', '.join(supported)}")
        if value not in MODEL_SET:
            raise ValueError(f"unknown model '{value[:64]}'; valid models: {', '.join(MODELS)}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return check_name(value)

    @model_validator(mode="after")
    def _size_fits_model(self) -> TrainingRequest:
        fixed = FIXED_INPUT_SIZE.get(self.model)
        if fixed is not None and self.image_size != fixed:
            raise ValueError(f"image_size: model '{self.model}' needs image_size {fixed}")
        smallest = MIN_INPUT_SIZE.get(self.model)
        if smallest is not None and self.image_size < smallest:
            raise ValueError(f"image_size: model '{self.model}' needs image_size >= {smallest}")
        return self

    def params(self, paths: Confinement) -> dict[str, Any]:
        weight = self.weight_path
        return {
            "model": self.model,
            "num_classes": self.num_classes,
            "train_path": paths.resolve("train_path", self.train_path, must_exist=True, allow_url=True),
            "val_path": paths.resolve("val_path", self.val_path, must_exist=True, allow_url=True),
            "save_path": paths.resolve("save_path", self.save_path),
            "name": self.name,
            "batch_size": self.batch_size,
            "num_epochs": self.num_epochs,
            "learning_rate": self.learning_rate,
            "image_size": self.image_size,
            "weight_path": paths.resolve("weight_path", weight, must_exist=True, allow_url=True) if weight else "",
            "pretrained": self.pretrained,
            "shuffle": self.shuffle,
            **self.upload_params(),
            "seed": self.seed,
            "deterministic": self.deterministic,
            "augment": self.augment,
            "num_workers": self.num_workers,
        }


class InferenceFields(TaskFields):
    priority_setting = "default_inference_priority"

    cfg_path: str = Field(description="model config written by training (YAML): local, .zip or URL")
    weight_path: str = Field(description="weights written by training: local, .zip or URL")
    device: str = "cuda"
    priority: int = Field(
        3, ge=1, le=10, description="1-10, higher runs first (default: RFUAV_DEFAULT_INFERENCE_PRIORITY)"
    )
    # Additions to API.md.
    batch_size: int = Field(32, ge=1, le=65_536)
    top_k: int = Field(5, ge=1, le=1000)

    _device = field_validator("device")(check_device)

    def model_params(self, paths: Confinement) -> dict[str, Any]:
        return {
            "cfg_path": paths.resolve("cfg_path", self.cfg_path, must_exist=True, allow_url=True),
            "weight_path": paths.resolve("weight_path", self.weight_path, must_exist=True, allow_url=True),
            "batch_size": self.batch_size,
            "top_k": self.top_k,
        }


class InferenceRequest(InferenceFields, UploadFields):
    """POST /api/v2/inference/start (API.md §4.1)."""

    source_path: str = Field(description="an image, a folder of images, a .zip or an http(s) URL")
    save_path: str | None = Field(None, description="results directory (default: the task's own)")
    name: str | None = Field(None, description="sub-directory appended to save_path")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return check_name(value)

    def params(self, paths: Confinement) -> dict[str, Any]:
        return {
            **self.model_params(paths),
            "source_path": paths.resolve("source_path", self.source_path, must_exist=True, allow_url=True),
            "save_path": paths.resolve("save_path", self.save_path) if self.save_path is not None else None,
            "name": self.name,
            **self.upload_params(),
        }


class BatchInferenceRequest(InferenceFields):
    """POST /api/v2/inference/batch (API.md §4.2): one inference task per source path."""

    source_paths: list[str] = Field(min_length=1, max_length=1000)
    save_base_path: str | None = None

    def params_list(self, paths: Confinement, task_ids: list[str]) -> list[dict[str, Any]]:
        """Params of each task: ``name`` is the new task's id, so results never collide."""
        base = self.model_params(paths)
        save = paths.resolve("save_base_path", self.save_base_path) if self.save_base_path is not None else None
        out = []
        for i, (source, task_id) in enumerate(zip(self.source_paths, task_ids)):
            out.append({
                **base,
                "source_path": paths.resolve(f"source_paths.{i}", source, must_exist=True, allow_url=True),
                "save_path": save,
                "name": task_id,
                "enable_upload": False,
                "upload_url": None,
                "token": None,
            })  # fmt: skip
        return out


class SplitRequest(TaskFields):
    """POST /api/v2/preprocessing/split (API.md §5)."""

    input_path: str = Field(description="ImageFolder directory")
    output_path: str = Field(description="receives train/, val/ and test/")
    train_ratio: float = Field(0.7, ge=0, le=1)
    val_ratio: float = Field(0.2, ge=0, le=1)
    seed: int | None = Field(42, ge=0, le=2**32 - 1)
    device: str = "cpu"

    _device = field_validator("device")(check_device)

    @model_validator(mode="after")
    def _ratios(self) -> SplitRequest:
        if self.train_ratio + self.val_ratio > 1.0 + 1e-9:
            raise ValueError("val_ratio: train_ratio + val_ratio must be <= 1 (the rest is the test set)")
        return self

    def params(self, paths: Confinement) -> dict[str, Any]:
        return {
            "input_path": paths.resolve("input_path", self.input_path, must_exist=True),
            "output_path": paths.resolve("output_path", self.output_path),
            "train_ratio": self.train_ratio,
            "val_ratio": self.val_ratio,
            "seed": self.seed,
        }


class AugmentRequest(TaskFields):
    """POST /api/v2/preprocessing/augment (API.md §5)."""

    dataset_path: str
    output_path: str
    methods: list[str] = Field(min_length=1, description=f"from {', '.join(AUGMENT_METHODS)}")
    copies: int = Field(1, ge=1, le=100, description="augmented copies per image per method")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    device: str = "cpu"

    _device = field_validator("device")(check_device)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in AUGMENT_METHODS]
        if unknown:
            names = ", ".join(f"'{m[:64]}'" for m in unknown[:10])
            raise ValueError(f"unknown augmentation method(s) {names}; valid: {', '.join(AUGMENT_METHODS)}")
        return value

    def params(self, paths: Confinement) -> dict[str, Any]:
        return {
            "dataset_path": paths.resolve("dataset_path", self.dataset_path, must_exist=True),
            "output_path": paths.resolve("output_path", self.output_path),
            "methods": list(self.methods),
            "copies": self.copies,
            "seed": self.seed,
        }


class CropRequest(TaskFields):
    """POST /api/v2/preprocessing/crop (API.md §5)."""

    input_path: str
    output_path: str
    x: int = Field(ge=0, le=1_000_000)
    y: int = Field(ge=0, le=1_000_000)
    width: int = Field(ge=1, le=1_000_000)
    height: int = Field(ge=1, le=1_000_000)
    device: str = "cpu"

    _device = field_validator("device")(check_device)

    def params(self, paths: Confinement) -> dict[str, Any]:
        return {
            "input_path": paths.resolve("input_path", self.input_path, must_exist=True),
            "output_path": paths.resolve("output_path", self.output_path),
            "x": self.x,
            "y": self.y,
            "width": self.width,
            "height": self.height,
        }


class DiagnosticRequest(TaskFields):
    """POST /api/v2/diagnostic/start (addition): the diagnostic job, for tests and operators."""

    # The supervisor bounds these too (``supervisor.jobs.diagnostic_problem``), memory_mb by
    # the job's memory limit, which web does not know.
    events: int = Field(0, ge=0, le=1_000_000)
    size: int = Field(0, ge=0, le=65_536)
    rate: float = Field(0, ge=0, le=100_000)
    sleep: float = Field(0, ge=0, le=3_600)
    memory_mb: int = Field(0, ge=0, le=1 << 20)
    ignore_sigterm: bool = False
    grandchild: bool = False
    exit_code: int | None = Field(None, ge=0, le=255)
    raise_: str | None = Field(None, alias="raise")
    device: str = "cpu"

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
    _device = field_validator("device")(check_device)

    def params(self, paths: Confinement) -> dict[str, Any]:
        out: dict[str, Any] = {
            "events": self.events, "size": self.size, "rate": self.rate, "sleep": self.sleep,
            "memory_mb": self.memory_mb, "ignore_sigterm": self.ignore_sigterm,
            "grandchild": self.grandchild,
        }  # fmt: skip
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        if self.raise_ is not None:
            out["raise"] = self.raise_
        return out


class LimitsRequest(BaseModel):
    """POST /api/v2/resources/config: ``{max_concurrent: {device: {task_type: n}}}``."""

    model_config = STRICT

    max_concurrent: dict[str, dict[str, int]] = Field(min_length=1)

    @field_validator("max_concurrent")
    @classmethod
    def _limits(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for device, limits in value.items():
            if device != "gpu" and not DEVICE_RE.fullmatch(device):
                raise ValueError(f"unknown device '{device[:32]}' (cpu, gpu, cuda or cuda:N)")
            for task_type, n in limits.items():
                if not 0 <= n <= 10_000:
                    raise ValueError(f"{device}.{task_type} must be between 0 and 10000")
        return value
