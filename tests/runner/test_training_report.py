"""The confusion matrix and per-class figures of ``epoch_end`` (the dashboard's heat map and
table), on the session's training run (``trained``, tests/runner/conftest.py): consistent with
the epoch's own metrics, and for the best epoch with scikit-learn on the predictions of
``best.pth`` (the weights of that very validation pass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from protocol.events import check_event
from runner import datasets, models
from tests.runner.harness import RunnerProcess


def test_epoch_end_carries_confusion_and_per_class(trained: dict[str, Any], digits: dict[str, Path]) -> None:
    rp: RunnerProcess = trained["rp"]
    names = [str(i) for i in range(10)]
    val_size = sum(1 for _ in digits["val"].glob("*/*.png"))
    ends = rp.stage("epoch_end")
    assert ends, rp.log_tail()
    for e in ends:
        assert check_event(e) is None
        assert len(orjson.dumps(e)) < 8192  # a few KiB: one per epoch, in every log and stream
        assert e["class_names"] == names
        cm = np.array(e["confusion"])
        assert cm.shape == (10, 10) and all(type(v) is int for row in e["confusion"] for v in row)
        assert cm.sum() == val_size
        # The matrix is the pass that gave the epoch's metrics.
        assert np.trace(cm) * 100.0 / val_size == pytest.approx(e["metrics"]["val_acc"], abs=1e-9)
        assert list(e["per_class"]) == names
        rows = [e["per_class"][n] for n in names]
        assert [r["support"] for r in rows] == cm.sum(axis=1).tolist()
        assert np.mean([r["precision"] for r in rows]) == pytest.approx(e["metrics"]["precision"], abs=1e-9)
        assert np.mean([r["recall"] for r in rows]) == pytest.approx(e["metrics"]["recall"], abs=1e-9)
        assert np.mean([r["f1"] for r in rows]) == pytest.approx(e["metrics"]["macro_f1"], abs=1e-9)

    # The best epoch against scikit-learn on the predictions of best.pth, recomputed here.
    out: Path = trained["out"]
    best = torch.load(out / "best.pth", weights_only=True)
    reported = max(e["metrics"]["val_acc"] for e in ends)
    event = next(e for e in ends if e["metrics"]["val_acc"] == reported)  # best.pth: the first best
    model = models.build("resnet18", 10)
    models.load_state(model, best["model"], what="best.pth")
    model.eval()
    val = datasets.ImageFolder(digits["val"], datasets.transforms(32), class_names=names)
    logits, targets = [], []
    with torch.inference_mode():
        for i in range(0, len(val), 64):
            batch = [val[j] for j in range(i, min(i + 64, len(val)))]
            logits.append(model(torch.stack([b[0] for b in batch])))
            targets += [b[1] for b in batch]
    y, pred = np.array(targets), torch.cat(logits).argmax(1).numpy()
    labels = list(range(10))
    assert event["confusion"] == confusion_matrix(y, pred, labels=labels).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, name in enumerate(names):
        got = event["per_class"][name]
        assert got["precision"] == pytest.approx(precision[i], abs=1e-9), name
        assert got["recall"] == pytest.approx(recall[i], abs=1e-9), name
        assert got["f1"] == pytest.approx(f1[i], abs=1e-9), name
        assert got["support"] == support[i], name
