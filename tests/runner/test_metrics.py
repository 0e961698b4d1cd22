"""runner.metrics on a known example: the values worked out by hand, and scikit-learn's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from runner import metrics

# Six samples, three classes; predictions (argmax) 0, 1, 1, 1, 2, 0 for targets 0, 0, 1, 1, 2, 2.
LOGITS = torch.tensor(
    [[3.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 3.0, 1.0], [0.5, 2.5, 0.0], [0.0, 1.0, 4.0], [2.0, 0.0, 1.5]]
)
TARGETS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_classification_by_hand() -> None:
    # Per class (precision, recall, F1): 0 → (1/2, 1/2, 1/2), 1 → (2/3, 1, 4/5), 2 → (1, 1/2, 2/3).
    m = metrics.classification(LOGITS, TARGETS)
    assert m["val_acc"] == pytest.approx(400 / 6) and m["top1_acc"] == pytest.approx(400 / 6)
    assert m["micro_f1"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert m["top3_acc"] == 100.0 and m["top5_acc"] == 100.0  # k >= num_classes
    # Softmax scores of class 0 rank its two samples 1st and 3rd of six (precision 1, then 2/3:
    # AP 5/6); classes 1 and 2 rank theirs 1st and 2nd (AP 1): mAP = (5/6 + 1 + 1) / 3.
    assert m["mAP"] == pytest.approx((5 / 6 + 1 + 1) / 3)


def _sklearn(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    y, probs = targets.numpy(), torch.softmax(logits, 1).numpy()
    pred = probs.argmax(1)
    present = np.unique(y)
    return {
        "val_acc": float((pred == y).mean() * 100),
        "macro_f1": f1_score(y, pred, average="macro", zero_division=0),
        "micro_f1": f1_score(y, pred, average="micro", zero_division=0),
        "precision": precision_score(y, pred, average="macro", zero_division=0),
        "recall": recall_score(y, pred, average="macro", zero_division=0),
        "mAP": float(np.mean([average_precision_score(y == c, probs[:, c]) for c in present])),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_scikit_learn(seed: int) -> None:
    """Random logits over 7 classes, class 6 never a target (mAP is over the present classes)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 7, generator=g)
    targets = torch.randint(0, 6, (40,), generator=g)
    got = metrics.classification(logits, targets)
    for name, value in _sklearn(logits, targets).items():
        assert got[name] == pytest.approx(value, abs=1e-9), name
    top3 = (logits.topk(3, 1).indices == targets[:, None]).any(1).float().mean().item() * 100
    assert got["top3_acc"] == pytest.approx(top3) and got["top5_acc"] >= got["top3_acc"]


def test_class_report_by_hand() -> None:
    # The same six samples: [true][predicted] counts, and the per-class figures worked out above.
    r = metrics.class_report(LOGITS, TARGETS, ["a", "b", "c"])
    assert r["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert r["class_names"] == ["a", "b", "c"]
    expected = {"a": (1 / 2, 1 / 2, 1 / 2, 2), "b": (2 / 3, 1, 4 / 5, 2), "c": (1, 1 / 2, 2 / 3, 2)}
    for name, (p, rec, f1, support) in expected.items():
        got = r["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, rec, f1)), name
        assert got["support"] == support
    # A class nobody predicts and no sample has: zeros, not NaN; the matrix keeps its row.
    wide = metrics.class_report(torch.cat([LOGITS, torch.full((6, 1), -9.0)], 1), TARGETS, ["a", "b", "c", "d"])
    assert wide["confusion"][3] == [0, 0, 0, 0] and wide["per_class"]["d"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0
    }  # fmt: skip
    # Too many classes for a table: nothing.
    many = metrics.REPORT_MAX_CLASSES + 1
    assert metrics.class_report(torch.randn(4, many), torch.tensor([0, 1, 2, 3]), [str(i) for i in range(many)]) == {}
