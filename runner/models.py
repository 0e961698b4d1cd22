"""Classifier models: build any ``protocol.catalog.MODELS`` name with a head for ``num_classes``,
and load weights without ever executing code from a file.

Contracts:

- ``build(name, num_classes)`` returns a torchvision model with random weights (``weights=None``)
  whose classifier head outputs ``num_classes`` logits; auxiliary heads (googlenet,
  inception_v3) are off so the forward pass returns one tensor in train and eval mode.
- ``load_weights_file(path)`` uses ``torch.load(weights_only=True)``: a pickle that would run
  code is refused with ``WeightsError`` and never runs.
- ``cached_imagenet_state(name)`` reads torchvision's ImageNet weights only when the file is
  already in the local torch hub cache; it never downloads.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torchvision import models as tvm

from protocol.catalog import FIXED_INPUT_SIZE, MODEL_SET

#: Where each family keeps its classifier head (attribute path; digits index a Sequential).
#: Families differ: a Linear ``fc``, the last Linear of a ``classifier`` Sequential, a ``heads``
#: module, or (squeezenet) a 1×1 convolution.
_HEADS: tuple[tuple[str, str], ...] = (
    ("resnet", "fc"),
    ("resnext", "fc"),
    ("wide_resnet", "fc"),
    ("regnet", "fc"),
    ("googlenet", "fc"),
    ("inception", "fc"),
    ("shufflenet", "fc"),
    ("alexnet", "classifier.6"),
    ("vgg", "classifier.6"),
    ("squeezenet", "classifier.1"),
    ("densenet", "classifier"),
    ("mnasnet", "classifier.1"),
    ("mobilenet_v2", "classifier.1"),
    ("mobilenet_v3", "classifier.3"),
    ("efficientnet", "classifier.1"),
    ("convnext", "classifier.2"),
    ("vit", "heads.head"),
    ("swin", "head"),
    ("maxvit", "classifier.5"),
)


class WeightsError(ValueError):
    """A weights file that cannot be used: unsafe, unreadable, or not fitting the model."""


def head_path(name: str) -> str:
    for prefix, path in _HEADS:
        if name.startswith(prefix):
            return path
    raise ValueError(f"no classifier head known for model {name!r}")


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)  # type: ignore[index]
    return module


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, last = path.rpartition(".")
    parent = _get(module, parent_path) if parent_path else module
    if last.isdigit():
        cast(nn.Sequential, parent)[int(last)] = new
    else:
        setattr(parent, last, new)


def replace_head(model: nn.Module, name: str, num_classes: int) -> nn.Module:
    """Swap the classifier head of ``model`` (a torchvision ``name``) for one of ``num_classes``."""
    path = head_path(name)
    old = _get(model, path)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d):
        # squeezenet: a 1x1 convolution per class, then global pooling
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
        setattr(model, "num_classes", num_classes)  # noqa: B010 - torch types the attribute as a Tensor
    else:
        raise TypeError(f"{name}: unexpected head type {type(old).__name__} at {path}")
    _set(model, path, new)
    return model


def _builder_kwargs(name: str) -> dict[str, Any]:
    if name in ("inception_v3", "googlenet"):
        # Aux heads make the training-mode forward return a tuple; the service trains the
        # main head only. init_weights=True keeps torchvision's own initialisation (and
        # silences its warning about the default changing).
        return {"aux_logits": False, "init_weights": True}
    if name.startswith("vit_"):
        # A ViT's position embeddings fix its input size; without weights torchvision builds
        # every ViT for 224, but the catalog (and vit_h_14's ImageNet weights) say 518 for h_14.
        return {"image_size": FIXED_INPUT_SIZE[name]}
    return {}


def build(name: str, num_classes: int, imagenet_state: dict[str, Any] | None = None) -> nn.Module:
    """A fresh ``name`` with ``num_classes`` outputs; ImageNet weights first when given."""
    if name not in MODEL_SET:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODEL_SET))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = tvm.get_model(name, weights=None, **_builder_kwargs(name))
    if imagenet_state is not None:
        load_state(
            model,
            imagenet_state,
            what=f"ImageNet weights of {name}",
            allow_unexpected_aux=True,
        )
    return replace_head(model, name, num_classes)


def cached_imagenet_state(name: str) -> tuple[dict[str, Any] | None, str]:
    """torchvision's default ImageNet weights for ``name`` if already in the local hub cache.

    Returns ``(state_dict or None, explanation)``. Never touches the network: the cache file is
    checked first and read with ``torch.load(weights_only=True)``.
    """
    try:
        weights = tvm.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError) as exc:
        return None, f"no torchvision weights known for {name}: {exc}"
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        return (
            None,
            f"ImageNet weights {filename} are not in the local cache {cached.parent}",
        )
    try:
        state = torch.load(cached, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        return None, f"cached ImageNet weights {cached} unreadable: {exc}"
    return state, f"ImageNet weights from {cached}"


def load_weights_file(path: Path) -> dict[str, Any]:
    """Read a weights file safely (``weights_only=True``); returns the top-level dict."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"refused weights file {path.name}: it is not a plain tensor file and loading it would run code ({first})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise WeightsError(f"cannot read weights file {path.name}: {exc}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"weights file {path.name} holds a {type(obj).__name__}, not a dict")
    return obj


def state_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model state dict inside ``checkpoint``: our ``{"model": ...}`` or a bare state dict."""
    for key in ("model", "state_dict", "model_state_dict"):
        inner = checkpoint.get(key)
        if isinstance(inner, dict):
            return inner
    return checkpoint


def load_state(
    model: nn.Module,
    state: dict[str, Any],
    *,
    what: str,
    allow_shape_mismatch: bool = False,
    allow_unexpected_aux: bool = False,
) -> list[str]:
    """Load ``state`` into ``model``; returns the keys skipped for a shape mismatch.

    ``allow_shape_mismatch``: tensors whose shape differs (a head trained for another class
    count) are skipped instead of failing. Any other missing or unexpected key fails with
    ``WeightsError``.
    """
    own = model.state_dict()
    clean = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel checkpoints
    skipped: list[str] = []
    fitting: dict[str, Any] = {}
    for key, value in clean.items():
        if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape:
            if not allow_shape_mismatch:
                raise WeightsError(
                    f"{what}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}"
                )
            skipped.append(key)
            continue
        fitting[key] = value
    result = model.load_state_dict(fitting, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    unexpected = list(result.unexpected_keys)
    if allow_unexpected_aux:
        unexpected = [k for k in unexpected if not k.startswith(("AuxLogits.", "aux1.", "aux2."))]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(f"{what} do not fit the model: {'; '.join(detail)}")
    return skipped
