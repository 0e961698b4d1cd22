"""Request models (pydantic v2, strict types) and their translation into ``TaskSpec`` params.

Contracts:

- Field names, defaults and ranges are API.md's; additions are optional with defaults
  (/work/notes/params.md). Numbers also have generous upper bounds (no 10^18 epochs), so no value
  can overflow the store's 64-bit integers. Unknown fields are ignored, as the original service did.
- Types are strict: ``"8"`` is not an integer and ``1`` is not a boolean (a float field accepts
  an integer). A violation becomes a 400 naming every offending field (``validation_errors``).
- ``params(paths)`` returns the job's params with every local path resolved and confined
  (``web.paths``); it raises ``PathRefused`` for the first refused path of each field.
- ``token`` is a secret: it is carried in params for the runner and never appears in a message.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from protocol.catalog import (
    AUGMENT_METHODS,
    FIXED_INPUT_SIZE,
    MIN_INPUT_SIZE,
    MODEL_SET,
    MODELS,
)
from protocol.tasks import DEVICE_RE, TASK_ID_RE
from web.paths import Confinement, PathRefused, url_problem

_STRICT = ConfigDict(strict=True, extra="ignore")
#: An upload token: visible ASCII, inner spaces allowed ("Bearer x"); "" or null means none.
_TOKEN_RE = re.compile(r"[!-~](?:[ -~]*[!-~])?")
MAX_TOKEN = 4096


def _check_device(value: str) -> str:
    if not DEVICE_RE.fullmatch(value):
        raise ValueError("must be 'cpu', 'cuda' or 'cuda:N'")
    return value


def _check_task_id(value: str | None) -> str | None:
    if value is not None and not TASK_ID_RE.fullmatch(value):
        raise ValueError("must be 1-128 characters of letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


class TaskFields(BaseModel):
    """Fields every task request shares."""

    model_config = _STRICT
    default_device: ClassVar[str] = "cpu"

    task_id: str | None = Field(None, description="custom task id (must be new)")
    priority: int = Field(5, ge=1, le=10, description="1-10, higher runs first")
    description: str | None = None

    _task_id = field_validator("task_id")(_check_task_id)

    def spec(self, task_type: str, job: str, params: dict[str, Any], device: str) -> dict[str, Any]:
        """The ``TaskSpec`` object of this request (a plain dict for the control ``submit``)."""
        return {
            "task_type": task_type,
            "job": job,
            "params": params,
            "device": device,
            "priority": self.priority,
            "task_id": self.task_id,
            "description": self.description,
            "strategy_type": getattr(self, "strategy_type", None),
        }


class UploadFields(BaseModel):
    model_config = _STRICT

    enable_upload: bool = Field(False, description="upload results to the satellite platform")
    upload_url: str | None = Field(None, description="upload endpoint (default: the configured one)")
    token: str | None = Field(None, description="auth token for the upload; never echoed or logged")

    @field_validator("upload_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        problem = url_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        # The token becomes an HTTP header value: anything else would make the upload raise an
        # error quoting it. The value is never echoed.
        if value and not (len(value) <= MAX_TOKEN and _TOKEN_RE.fullmatch(value)):
            raise ValueError(
                f"must be at most {MAX_TOKEN} printable ASCII characters, without control characters "
                "or leading or trailing whitespace"
            )
        return value

    def upload_params(self) -> dict[str, Any]:
        return {"enable_upload": self.enable_upload, "upload_url": self.upload_url, "token": self.token}


class TrainingRequest(TaskFields, UploadFields):
    """POST /api/v2/training/start (API.md §3.1)."""

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
    # Additions (params.md).
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    deterministic: bool = False
    augment: bool = Field(True, description="mild train-time augmentation")
    num_workers: int | None = Field(None, ge=0, le=256, description="override the DataLoader workers")

    _device = field_validator("device")(_check_device)

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if value not in MODEL_SET:
            raise ValueError(f"unknown model '{value[:64]}'; valid models: {', '.join(MODELS)}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return _check_name(value)

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


def _check_name(value: str | None) -> str | None:
    # ``name`` becomes one directory below save_path: no separators, no climbing.
    if value is not None and (value in ("", ".", "..") or "/" in value or "\\" in value or "\x00" in value):
        raise ValueError("must be a single directory name (no '/', not '.' or '..')")
    return value


class InferenceFields(TaskFields):
    cfg_path: str = Field(description="model config written by training (YAML): local, .zip or URL")
    weight_path: str = Field(description="weights written by training: local, .zip or URL")
    device: str = "cuda"
    priority: int = Field(3, ge=1, le=10, description="1-10, higher runs first")
    # Additions (params.md).
    batch_size: int = Field(32, ge=1, le=65_536)
    top_k: int = Field(5, ge=1, le=1000)

    _device = field_validator("device")(_check_device)

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
        return _check_name(value)

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

    _device = field_validator("device")(_check_device)

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

    _device = field_validator("device")(_check_device)

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

    _device = field_validator("device")(_check_device)

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
    _device = field_validator("device")(_check_device)

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

    model_config = _STRICT

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


# -- errors ---------------------------------------------------------------------------------

_TYPE_NAMES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "list_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "none_required": "is not accepted here",
    "missing": "is required",
    "int_parsing": "must be an integer",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
}


def _num(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _reason(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind in _TYPE_NAMES:
        return _TYPE_NAMES[kind]
    if kind == "greater_than_equal":
        return f"must be >= {_num(ctx.get('ge'))}"
    if kind == "greater_than":
        return f"must be > {_num(ctx.get('gt'))}"
    if kind == "less_than_equal":
        return f"must be <= {_num(ctx.get('le'))}"
    if kind == "less_than":
        return f"must be < {_num(ctx.get('lt'))}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "value_error":
        return str(ctx.get("error") or err.get("msg", "is invalid"))
    return str(err.get("msg", "is invalid"))


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """``[{field, error}]`` for every violation. Values are never echoed (a token is secret)."""
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in err.get("loc", ()))
        reason = _reason(dict(err))
        # A model-level check names its field as "field: reason".
        if not field and ": " in reason:
            field, reason = reason.split(": ", 1)
        out.append({"field": field or "body", "error": reason})
    return out


def path_error(exc: PathRefused) -> dict[str, str]:
    return {"field": exc.field, "error": exc.reason}
