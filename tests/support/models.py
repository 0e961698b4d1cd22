"""Trained-model files without training: ``write_model`` writes what a training run leaves beside
its weights (``best.pth`` as ``runner.training`` saves it, ``config.yaml`` as
``runner.trainparts.write_config`` writes it) for a randomly initialised model, in a second.

The batch-norm layers get non-trivial running statistics and affine parameters (random, from
``seed``), so that conv+bn folding has real work to do; the softmax of resnet18's outputs stays far
from saturated (predictions compared to within 1e-5 mean something).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from torch import nn

from runner import datasets, models


def write_model(
    dir: Path,
    *,
    model: str = "resnet18",
    image_size: int = 32,
    class_names: Sequence[str] = ("a", "b", "c"),
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``dir/best.pth`` and ``dir/config.yaml``; returns ``(cfg_path, weight_path)``."""
    dir.mkdir(parents=True, exist_ok=True)
    names = [str(n) for n in class_names]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = models.build(model, len(names))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
                    assert module.running_var is not None
                    n = module.num_features
                    module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                    module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                    module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                    module.bias.copy_(0.1 * torch.randn(n, generator=generator))
    checkpoint = {
        "model": net.state_dict(),
        "epoch": 1,
        "step": 1,
        "best_acc": 0.0,
        "model_name": model,
        "num_classes": len(names),
        "class_names": names,
        "image_size": image_size,
        "metrics": {},
    }
    weight_path = dir / "best.pth"
    torch.save(checkpoint, weight_path)
    config = {
        "model": model,
        "num_classes": len(names),
        "class_names": names,
        "image_size": image_size,
        "mean": list(datasets.MEAN),
        "std": list(datasets.STD),
    }
    cfg_path = dir / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return cfg_path, weight_path
