"""Building blocks of the training job, shared with ``benchmarks/training.py`` (whose bare loop
must match the job bit for bit): its parameters, seeding, loaders, optimizer and the
``config.yaml`` it writes beside the weights."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from runner import datasets
from runner.safefs import OutputTree


@dataclass(frozen=True)
class TrainingParams:
    model: str
    num_classes: int
    train_path: str
    val_path: str
    save_path: str
    name: str | None = None
    batch_size: int = 8
    num_epochs: int = 100
    learning_rate: float = 1e-4
    image_size: int = 224
    weight_path: str = ""
    pretrained: bool = True
    shuffle: bool = True
    enable_upload: bool = False
    upload_url: str | None = None
    token: str | None = field(default=None, repr=False)
    seed: int | None = None
    deterministic: bool = False
    augment: bool = True
    num_workers: int | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainingParams:
        """Known keys only (web validated them); a missing required key raises ``ValueError``."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in params.items() if k in known and v is not None}
        missing = [k for k in ("model", "num_classes", "train_path", "val_path", "save_path") if k not in values]
        if missing:
            raise ValueError(f"training parameter(s) missing: {', '.join(missing)}")
        return cls(**values)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every RNG the job uses; ``deterministic`` also forbids non-deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    workers: int,
    shuffle: bool,
    seed: int | None,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=datasets.seed_worker if workers > 0 else None,
        generator=generator,
        persistent_workers=workers > 0,
        drop_last=False,
    )


def make_optimizer(model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=learning_rate)


def write_config(out: OutputTree, p: TrainingParams, class_names: list[str]) -> Path:
    config = {
        "model": p.model,
        "num_classes": p.num_classes,
        "class_names": list(class_names),
        "image_size": p.image_size,
        "mean": list(datasets.MEAN),
        "std": list(datasets.STD),
    }
    return out.write_text("config.yaml", yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
