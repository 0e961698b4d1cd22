"""Training inputs in every documented form, reproducibility, and confined checkpoints: real
runner processes, one epoch of resnet18 at 32 px on the synthetic spectrograms."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from runner import models, training
from tests.runner.fileserver import serve
from tests.runner.harness import run_job

CLASSES = ["carrier", "chirp", "hopping"]
#: Metrics that measure time, not the model.
TIMING = ("train_images_per_s",)


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.png")):
            zf.write(path, f"data/{path.relative_to(folder)}")
    return archive


def _checkpoint(path: Path) -> Path:
    """A resumable checkpoint of an untrained model: one epoch done."""
    model = models.build("resnet18", 3)
    optimizer = training.make_optimizer(model, 1e-3)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1, "step": 5,
                "best_acc": 10.0, "model_name": "resnet18", "num_classes": 3, "class_names": CLASSES,
                "image_size": 32}, path)  # fmt: skip
    return path


@pytest.mark.timeout(300)
def test_zip_and_url_inputs_resume_and_deterministic_runs(spectro: Path, tmp_path: Path) -> None:
    """train_path a local zip, val_path the URL of a zip, weight_path the URL of a zip holding a
    resumable checkpoint; run twice with ``seed`` and ``deterministic``: identical metrics and
    weights."""
    served = tmp_path / "served"
    served.mkdir()
    _zip(spectro, served / "val.zip")
    _checkpoint(tmp_path / "w.pth")
    with zipfile.ZipFile(served / "weights.zip", "w") as zf:
        zf.write(tmp_path / "w.pth", "model/w.pth")
    train_zip = _zip(spectro, tmp_path / "train.zip")
    runs: list[Any] = []
    with serve(served) as base:
        for n in (1, 2):
            params = {"model": "resnet18", "num_classes": 3, "train_path": str(train_zip),
                      "val_path": f"{base}/val.zip", "weight_path": f"{base}/weights.zip",
                      "save_path": str(tmp_path / f"out{n}"), "batch_size": 8, "num_epochs": 2,
                      "learning_rate": 1e-3, "image_size": 32, "seed": 11, "deterministic": True}  # fmt: skip
            config = {"data_roots": [str(tmp_path)], "url_allow_loopback": True}
            runs.append(run_job("training", params, tmp_path / f"task{n}", timeout=140, torch_threads=1, config=config))
    for n, rp in enumerate(runs, 1):
        assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
        messages = [e["message"] for e in rp.events]
        assert "data: 36 training and 36 validation images, 3 classes (carrier, chirp, hopping)" in messages
        assert "resuming from w.pth: 1 epochs done, best_acc 10.00%" in messages
        assert [e["epoch"] for e in rp.stage("epoch_start")] == [2]
        task = tmp_path / f"task{n}"
        assert not [p for p in (task / "downloads").rglob("*") if p.is_file()]  # zips removed
        assert torch.load(tmp_path / f"out{n}" / "last.pth", weights_only=True)["epoch"] == 2
    first, second = ({k: v for k, v in rp.stage("epoch_end")[0]["metrics"].items() if k not in TIMING} for rp in runs)
    assert first == second
    # Step events are rate-limited by time, so the two runs report different steps: compare the
    # loss at each step both reported.
    steps = [{e["step"]: e["metrics"]["loss"] for e in rp.steps()} for rp in runs]
    common = steps[0].keys() & steps[1].keys()
    assert common and all(steps[0][k] == steps[1][k] for k in common)
    a, b = (torch.load(tmp_path / f"out{n}" / "last.pth", weights_only=True)["model"] for n in (1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    initial = torch.load(tmp_path / "w.pth", weights_only=True)["model"]
    assert not all(torch.equal(a[k], initial[k]) for k in a)  # it did train from the checkpoint


@pytest.mark.timeout(150)
def test_checkpoint_symlinked_outside_is_refused(spectro: Path, tmp_path: Path) -> None:
    """save_path/best.pth is a symbolic link to a file outside the data roots: the job fails
    naming it when it saves, and the outside file is untouched."""
    outside = tmp_path / "victim.bin"
    outside.write_bytes(b"precious")
    out = tmp_path / "root" / "out"
    out.mkdir(parents=True)
    (out / "best.pth").symlink_to(outside)
    params = {"model": "resnet18", "num_classes": 3, "train_path": str(spectro), "val_path": str(spectro),
              "save_path": str(out), "num_epochs": 1, "image_size": 32, "pretrained": False}  # fmt: skip
    config = {"data_roots": [str(tmp_path / "root"), str(spectro)]}
    rp = run_job("training", params, tmp_path / "task", timeout=140, torch_threads=1, config=config)
    assert rp.final is not None and rp.final["status"] == "failed", rp.log_tail()
    assert rp.final["message"] == f"UnsafePath: refused to write {out / 'best.pth'}: best.pth is a symbolic link"
    assert outside.read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["best.pth", "config.yaml"]
