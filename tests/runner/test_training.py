"""Training in real runner processes on real data (scikit-learn digits, synthetic spectrograms).

One training run (the session fixture ``trained``, tests/runner/conftest.py) proves learning,
the events, the metrics, the artifacts and the upload.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from protocol.events import EPOCH_METRICS, TRAINING_SUMMARY_METRICS, VALIDATION_METRICS
from runner import datasets, models
from tests.runner.conftest import TRAIN_EPOCHS as EPOCHS
from tests.runner.conftest import TRAIN_TOKEN as TOKEN
from tests.runner.harness import RunnerProcess, run_job
from tests.runner.satellite import Satellite


@pytest.mark.timeout(300)
def test_training_learns_digits(trained: dict[str, Any]) -> None:
    rp: RunnerProcess = trained["rp"]
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    ends = rp.stage("epoch_end")
    assert [e["epoch"] for e in ends] == list(range(1, EPOCHS + 1))
    assert max(e["metrics"]["val_acc"] for e in ends) >= 90.0
    for e in ends:
        assert set(EPOCH_METRICS) <= set(e["metrics"])
        assert all(isinstance(e["metrics"][k], (int, float)) for k in EPOCH_METRICS)
        assert e["total_epochs"] == EPOCHS and e["kind"] == "metrics" and 0 <= e["progress"] <= 100
        m = e["metrics"]
        assert 0 <= m["macro_f1"] <= 1 and 0 <= m["mAP"] <= 1 and 0 <= m["precision"] <= 1
        assert m["top1_acc"] == pytest.approx(m["val_acc"], abs=1e-3)
        assert m["top3_acc"] >= m["top1_acc"] and m["top5_acc"] >= m["top3_acc"]
    assert [e["epoch"] for e in rp.stage("epoch_start")] == list(range(1, EPOCHS + 1))
    assert len(rp.stage("validation")) == EPOCHS
    assert rp.stage("completed") and rp.stage("completed")[0]["progress"] == 100
    steps = rp.steps()
    assert steps and all(e["kind"] == "metrics" and "loss" in e["metrics"] for e in steps)
    assert [e["step"] for e in steps] == sorted(e["step"] for e in steps)
    # Per epoch, besides the steps: a training summary and a validation event in the original's
    # shapes (exactly its metric keys), with the numbers of the epoch's epoch_end.
    summaries = [e for e in rp.stage("training") if "step" not in e]
    assert len(summaries) + len(steps) == len(rp.stage("training"))
    validations = rp.stage("validation")
    for epoch, (s, v, end) in enumerate(zip(summaries, validations, ends, strict=True), 1):
        assert list(s["metrics"]) == list(TRAINING_SUMMARY_METRICS) and s["epoch"] == epoch
        assert list(v["metrics"]) == list(VALIDATION_METRICS) and v["epoch"] == epoch
        assert s["kind"] == v["kind"] == "metrics"
        assert {**s["metrics"], **v["metrics"]} == {k: end["metrics"][k] for k in (*s["metrics"], *v["metrics"])}
        assert rp.events.index(s) < rp.events.index(v) < rp.events.index(end)
    # The pretrained weights are not cached here: said, not hidden.
    assert any(e["level"] == "WARNING" and "from scratch" in e["message"] for e in rp.events)


@pytest.mark.timeout(120)
def test_best_checkpoint_reproduces_reported_accuracy(trained: dict[str, Any], digits: dict[str, Path]) -> None:
    rp: RunnerProcess = trained["rp"]
    out: Path = trained["out"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == "resnet18" and config["num_classes"] == 10
    assert config["class_names"] == [str(i) for i in range(10)] and config["image_size"] == 32
    assert len(config["mean"]) == 3 and len(config["std"]) == 3
    best = torch.load(out / "best.pth", weights_only=True)
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["epoch"] == EPOCHS and last["model_name"] == "resnet18" and last["num_classes"] == 10
    assert isinstance(last["optimizer"], dict)
    reported = max(e["metrics"]["val_acc"] for e in rp.stage("epoch_end"))
    assert best["best_acc"] == pytest.approx(reported)
    model = models.build("resnet18", 10)
    models.load_state(model, best["model"], what="best.pth")
    model.eval()
    val = datasets.ImageFolder(digits["val"], datasets.transforms(32), class_names=config["class_names"])
    logits, targets = [], []
    with torch.inference_mode():
        for i in range(0, len(val), 64):
            batch = [val[j] for j in range(i, min(i + 64, len(val)))]
            logits.append(model(torch.stack([b[0] for b in batch])))
            targets += [b[1] for b in batch]
    y, probs = np.array(targets), torch.softmax(torch.cat(logits), 1).numpy()
    pred = probs.argmax(1)
    assert (pred == y).mean() * 100.0 == pytest.approx(reported, abs=1e-6)
    # Every metric the best epoch reported, recomputed here with scikit-learn from the weights.
    event = next(e["metrics"] for e in rp.stage("epoch_end") if e["metrics"]["val_acc"] == reported)
    expected = {
        "macro_f1": f1_score(y, pred, average="macro", zero_division=0),
        "micro_f1": f1_score(y, pred, average="micro", zero_division=0),
        "precision": precision_score(y, pred, average="macro", zero_division=0),
        "recall": recall_score(y, pred, average="macro", zero_division=0),
        "mAP": np.mean([average_precision_score(y == c, probs[:, c]) for c in range(10)]),
    }
    for name, value in expected.items():
        assert event[name] == pytest.approx(value, abs=1e-6), name
        assert best["metrics"][name] == pytest.approx(value, abs=1e-6), name


def test_training_upload_retried_and_token_never_logged(trained: dict[str, Any], training_satellite: Satellite) -> None:
    satellite = training_satellite
    rp: RunnerProcess = trained["rp"]
    assert satellite.uploads[0].status == 500  # the failure, then the retry
    ok = satellite.successful()
    assert len(ok) == 2
    by_type = {u.fields["fileType"]: u for u in ok}
    assert set(by_type) == {"cfg_path", "weight_path"}
    cfg, weights = by_type["cfg_path"], by_type["weight_path"]
    assert cfg.fields["businessLabel"] == "SATEL_AGENT" and weights.fields["businessLabel"] == "SATEL_AGENT_WEIGHT"
    assert cfg.files["file"] == (
        "config.yaml",
        (trained["out"] / "config.yaml").read_bytes(),
    )
    assert weights.files["file"] == (
        "best.pth",
        (trained["out"] / "best.pth").read_bytes(),
    )
    assert all(u.headers.get("Authorization") == TOKEN for u in satellite.uploads)
    assert any("retrying" in e["message"] and e["level"] == "ERROR" for e in rp.events)
    journal = (trained["root"] / "task" / "events.jsonl").read_text()
    assert TOKEN not in journal
    assert all(TOKEN not in (trained["root"] / "task" / f).read_text() for f in ("stdout.log", "stderr.log"))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["pickle", "torch"])
def test_malicious_weights_refused_and_never_run(fmt: str, spectro: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    if fmt == "pickle":
        evil.write_bytes(pickle.dumps({"model": _Evil(marker)}))
    else:
        torch.save({"model": _Evil(marker)}, evil)
    assert not marker.exists()
    params = {"model": "resnet18", "num_classes": 3, "train_path": str(spectro), "val_path": str(spectro),
                  "save_path": str(tmp_path / "out"), "num_epochs": 1, "image_size": 32, "weight_path": str(evil)}  # fmt: skip
    rp = run_job("training", params, tmp_path / "task", timeout=100, torch_threads=1)
    assert rp.final is not None and rp.final["status"] == "failed"
    assert "refused weights file evil.pth" in rp.final["message"]
    assert not marker.exists()
    assert not (tmp_path / "out" / "last.pth").exists()


@pytest.mark.timeout(200)
def test_cancel_mid_epoch_saves_last_and_resume_continues(spectro: Path, tmp_path: Path) -> None:
    params: dict[str, Any] = {
        "model": "resnet18", "num_classes": 3, "train_path": str(spectro), "val_path": str(spectro),
        "save_path": str(tmp_path / "out"), "batch_size": 2, "num_epochs": 50, "learning_rate": 1e-3, "image_size": 32,
        "pretrained": False, "seed": 1,
    }  # fmt: skip
    with RunnerProcess("training", params, tmp_path / "task1", torch_threads=1) as rp:
        rp.wait_for(lambda e: e.get("stage") == "training", timeout=120)
        rp.terminate()
        final = rp.finish(timeout=120)
    assert final["status"] == "cancelled", rp.log_tail()
    last_path = tmp_path / "out" / "last.pth"
    checkpoint = torch.load(last_path, weights_only=True)
    done = checkpoint["epoch"]
    assert checkpoint["step"] >= 1 and done < 50
    assert any("stopped during epoch" in e["message"] for e in rp.events)

    params.update(weight_path=str(last_path), num_epochs=done + 1)
    rp2 = run_job("training", params, tmp_path / "task2", timeout=150, torch_threads=1)
    assert rp2.final is not None and rp2.final["status"] == "completed", rp2.log_tail()
    assert any(e["message"].startswith("resuming from last.pth") for e in rp2.events)
    assert [e["epoch"] for e in rp2.stage("epoch_start")] == [done + 1]
    assert rp2.steps()[0]["step"] > checkpoint["step"]
    assert torch.load(last_path, weights_only=True)["epoch"] == done + 1


@pytest.mark.timeout(100)
def test_class_count_mismatch_fails_clearly(spectro: Path, tmp_path: Path) -> None:
    params = {"model": "resnet18", "num_classes": 5, "train_path": str(spectro), "val_path": str(spectro),
                  "save_path": str(tmp_path / "out"), "num_epochs": 1, "image_size": 32}  # fmt: skip
    rp = run_job("training", params, tmp_path / "task", timeout=90, torch_threads=1)
    assert rp.final is not None and rp.final["status"] == "failed"
    assert "num_classes is 5 but the training set" in rp.final["message"] and "3 class folders" in rp.final["message"]
