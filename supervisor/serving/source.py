"""What a deployment serves and how: its model files (``from_task`` or ``cfg_path`` +
``weight_path``, the model described from ``config.yaml`` without torch) and its settings, each
checked with a message naming the field (``CommandError``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from protocol import serving as sv
from protocol.commands import Deploy, Reload
from protocol.replies import CommandError, ErrorCode
from protocol.tasks import COMPLETED, TaskRecord

#: Bounds of the settings (SERVING.md).
MAX_REPLICAS = 64
MAX_BATCH = 1024
MAX_DELAY_MS = 1000.0


def bad(message: str) -> CommandError:
    return CommandError(ErrorCode.BAD_REQUEST, message)


def _int(name: str, value: int, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f">= {low}"
        raise bad(f"{name} must be an integer {span}, got {value!r}")
    return value


def settings_of(c: Deploy, cores: int) -> sv.ServingSettings:
    """The deployment's settings (``threads`` defaults to the cores over the replicas)."""
    replicas = _int("replicas", c.replicas, 1, MAX_REPLICAS)
    threads = max(1, cores // replicas) if c.threads is None else _int("threads", c.threads, 1, 1024)
    delay = c.max_batch_delay_ms
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay):
        raise bad(f"max_batch_delay_ms must be a number between 0 and {MAX_DELAY_MS:g}, got {delay!r}")
    if not 0 <= delay <= MAX_DELAY_MS:
        raise bad(f"max_batch_delay_ms must be between 0 and {MAX_DELAY_MS:g}, got {delay!r}")
    return sv.ServingSettings(
        replicas=replicas,
        threads=threads,
        max_batch_size=_int("max_batch_size", c.max_batch_size, 1, MAX_BATCH),
        max_batch_delay_ms=float(delay),
        max_queue=_int("max_queue", c.max_queue, 1, 1_000_000),
        cache_size=_int("cache_size", c.cache_size, 0, 1_000_000),
        top_k=_int("top_k", c.top_k, 1, 1_000_000),
    )


def model_of(c: Deploy | Reload, find_task: Callable[[str], TaskRecord | None]) -> sv.ModelInfo:
    """The model files named by ``c`` (exactly one way), checked and described."""
    if c.from_task is not None:
        if c.cfg_path is not None or c.weight_path is not None:
            raise bad("give either from_task or cfg_path and weight_path, not both")
        cfg, weights = _task_files(c.from_task, find_task)
    elif c.cfg_path is not None and c.weight_path is not None:
        cfg, weights = c.cfg_path, c.weight_path
    elif c.cfg_path is None and c.weight_path is None:
        raise bad("give from_task, or cfg_path and weight_path")
    else:
        missing, given = ("weight_path", "cfg_path") if c.weight_path is None else ("cfg_path", "weight_path")
        raise bad(f"{missing} is required with {given}")
    return describe(cfg, weights)


def _task_files(task_id: str, find_task: Callable[[str], TaskRecord | None]) -> tuple[str, str]:
    task = find_task(task_id)
    if task is None:
        raise CommandError(ErrorCode.NOT_FOUND, f"from_task: task {task_id!r} not found")
    if task.task_type != "training":
        raise bad(f"from_task: task {task_id!r} is a {task.task_type} task, not a training")
    if task.status != COMPLETED:
        raise bad(f"from_task: training {task_id!r} is {task.status}, not completed")
    res: dict[str, Any] = task.result or {}
    cfg, best = res.get("config_path"), res.get("best_path")
    if not isinstance(cfg, str) or not isinstance(best, str):
        raise bad(f"from_task: training {task_id!r} does not name its artifacts; deploy with cfg_path and weight_path")
    return cfg, best


def describe(cfg_path: str, weight_path: str) -> sv.ModelInfo:
    """The model of ``cfg_path`` (a training's ``config.yaml``), the weights file checked to exist."""
    cfg, weights = Path(cfg_path), Path(weight_path)
    if not weights.is_file():
        raise bad(f"weight_path: {weight_path} is not a file")
    if not cfg.is_file():
        raise bad(f"cfg_path: {cfg_path} is not a file")
    try:
        raw = yaml.safe_load(cfg.read_text()[:1_000_000])
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise bad(f"cfg_path: {cfg.name} is not a readable YAML file: {exc}") from None
    try:
        model, num_classes, image_size, names = sv.model_config(raw, cfg.name)
    except ValueError as exc:
        raise bad(f"cfg_path: {exc}") from None
    return sv.ModelInfo(
        model=model,
        num_classes=num_classes,
        image_size=image_size,
        class_names=names,
        cfg_path=str(cfg.resolve()),
        weight_path=str(weights.resolve()),
    )
