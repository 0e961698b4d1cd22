"""Validation metrics of one epoch (API.md §3.3), computed for real from logits and targets.

Units follow the contract: accuracies and top-k in percent (0–100; top-k with k ≥ num_classes
is 100), F1, precision, recall and mAP as fractions (0–1).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
)


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
