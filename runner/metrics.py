"""Validation metrics of one epoch (API.md §3.3), computed for real from logits and targets.

Units follow the contract: accuracies and top-k in percent (0–100; top-k with k ≥ num_classes
is 100), F1, precision, recall and mAP as fractions (0–1). ``class_report`` adds the confusion
matrix and per-class figures that ``epoch_end`` carries for the dashboard.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
)

#: Above this many classes ``class_report`` is empty: an epoch_end event stays a few KiB
#: (64 classes: a 4,096-cell matrix), and a wider matrix is no table to read anyway.
REPORT_MAX_CLASSES = 64


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Percentage of samples whose target is among the ``k`` highest logits."""
    num_classes = logits.shape[1]
    if k >= num_classes:
        return 100.0
    top = logits.topk(k, dim=1).indices
    hits = (top == targets.unsqueeze(1)).any(dim=1)
    return float(hits.float().mean().item() * 100.0)


def mean_average_precision(probs: np.ndarray, targets: np.ndarray, num_classes: int) -> float:
    """Macro average precision over one-hot labels, over the classes present in ``targets``
    (average precision is undefined for a class without positives)."""
    onehot = np.eye(num_classes, dtype=np.int64)[targets]
    present = onehot.sum(axis=0) > 0
    if not present.any():
        return 0.0
    return float(average_precision_score(onehot[:, present], probs[:, present], average="macro"))


def classification(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """val_acc, macro/micro F1, macro precision and recall, mAP and top-1/3/5 accuracy."""
    logits = logits.float()
    num_classes = logits.shape[1]
    preds = logits.argmax(dim=1).numpy()
    y = targets.numpy()
    probs = torch.softmax(logits, dim=1).numpy()
    with warnings.catch_warnings():
        # Averages run over the classes present in targets or predictions (sklearn's default);
        # zero_division=0 already decides the value, the warning would only reach stderr.log.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        macro_f1 = f1_score(y, preds, average="macro", zero_division=0)
        micro_f1 = f1_score(y, preds, average="micro", zero_division=0)
        precision = precision_score(y, preds, average="macro", zero_division=0)
        recall = recall_score(y, preds, average="macro", zero_division=0)
    return {
        "val_acc": float((preds == y).mean() * 100.0) if len(y) else 0.0,
        "macro_f1": float(macro_f1),
        "micro_f1": float(micro_f1),
        "mAP": mean_average_precision(probs, y, num_classes),
        "top1_acc": topk_accuracy(logits, targets, 1),
        "top3_acc": topk_accuracy(logits, targets, 3),
        "top5_acc": topk_accuracy(logits, targets, 5),
        "precision": float(precision),
        "recall": float(recall),
    }


def class_report(logits: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """The ``epoch_end`` fields of a validation pass, from the same predictions (argmax) as
    ``classification``: ``confusion`` (counts, ``[true][predicted]``, in the order of
    ``class_names``), ``class_names`` and ``per_class`` (name → precision, recall, f1 as
    fractions and support, scikit-learn's ``precision_recall_fscore_support``; 0 where
    undefined). Empty beyond ``REPORT_MAX_CLASSES`` classes."""
    names = [str(n) for n in class_names]
    if not names or len(names) > REPORT_MAX_CLASSES:
        return {}
    labels = list(range(len(names)))
    preds = logits.float().argmax(dim=1).numpy()
    y = targets.numpy()
    matrix = confusion_matrix(y, preds, labels=labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, support = precision_recall_fscore_support(y, preds, labels=labels, zero_division=0)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    return {"confusion": matrix.tolist(), "class_names": names, "per_class": per_class}
