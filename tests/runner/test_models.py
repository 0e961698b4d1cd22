"""Every model of the catalog: the names agree with torchvision, each builds with random weights
(``weights=None``) and classifies into ``num_classes``; weights load safely."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from protocol.catalog import FIXED_INPUT_SIZE, MIN_INPUT_SIZE, MODELS
from runner import models

#: Built for real, with a forward pass: one model of each family (each family's own code runs
#: with real weights and arithmetic), and every regnet (they cannot be built on the meta device).
#: Every other model runs its whole forward on the meta device (shapes only: its head is replaced
#: and every layer before it fits), which costs milliseconds instead of seconds to a minute.
REAL = frozenset({
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
    "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "resnet18",
    "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11", "vit_b_32",
    "wide_resnet50_2",
})  # fmt: skip
#: Regnets of 16 GFLOPs and more: seconds each (random init); still built for real.
SLOW_REGNETS = frozenset({"regnet_x_16gf", "regnet_x_32gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf"})
NUM_CLASSES = 7


def test_catalog_names_are_torchvision_classifiers() -> None:
    assert sorted(MODELS) == sorted(torchvision.models.list_models(module=torchvision.models))


def _out_features(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels  # type: ignore[return-value]


def _size(name: str) -> int:
    return FIXED_INPUT_SIZE.get(name, max(64, MIN_INPUT_SIZE.get(name, 0)))


def _real(name: str) -> bool:
    return name in REAL or name.startswith("regnet")


@pytest.mark.timeout(120)
def test_other_models_classify_on_meta() -> None:
    """Every model not built for real: head replaced, and the whole forward fits."""
    names = sorted(n for n in MODELS if not _real(n))
    assert len(names) > 40
    for name in names:
        with torch.device("meta"):
            model = models.build(name, NUM_CLASSES).eval()
            head = models._get(model, models.head_path(name))
            assert _out_features(head) == NUM_CLASSES, name
            with torch.inference_mode():
                out = model(torch.randn(1, 3, _size(name), _size(name)))
        assert out.shape == (1, NUM_CLASSES) and out.is_meta, name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[pytest.mark.slow, pytest.mark.timeout(600)]) if n in SLOW_REGNETS else n
        for n in sorted(MODELS)
        if _real(n)
    ],
)
def test_model_builds_and_classifies(name: str) -> None:
    model = models.build(name, NUM_CLASSES).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, _size(name), _size(name)))
    assert isinstance(out, torch.Tensor) and out.shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_aux_heads_off_in_training_mode(name: str) -> None:
    model = models.build(name, 3).train()
    out = model(torch.randn(2, 3, 80, 80))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        models.build("resnet19", 3)


def test_weights_of_another_head_are_skipped_others_must_fit(tmp_path: Path) -> None:
    source = models.build("resnet18", 10)
    path = tmp_path / "w.pth"
    torch.save({"model": source.state_dict()}, path)
    target = models.build("resnet18", 3)
    skipped = models.load_state(target, models.state_of(models.load_weights_file(path)), what="w",
                                allow_shape_mismatch=True)  # fmt: skip
    assert skipped == ["fc.weight", "fc.bias"]
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    with pytest.raises(models.WeightsError, match="fc.weight has shape"):
        models.load_state(models.build("resnet18", 3), source.state_dict(), what="w")
    with pytest.raises(models.WeightsError, match="do not fit the model"):
        models.load_state(models.build("resnet34", 10), source.state_dict(), what="w")


def test_cached_imagenet_weights_never_downloaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    state, why = models.cached_imagenet_state("resnet18")
    assert state is None and "not in the local cache" in why
    # A cache file present is used (read with weights_only).
    (tmp_path / "checkpoints").mkdir()
    reference = torchvision.models.resnet18(weights=None)
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / Path(url).name)
    state, why = models.cached_imagenet_state("resnet18")
    assert state is not None and "ImageNet weights from" in why
    model = models.build("resnet18", 4, imagenet_state=state)
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert model.fc.out_features == 4
