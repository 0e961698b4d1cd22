"""Runner events: the one record, its names, and the wire shape.

Wire shape, on both hops: one ZeroMQ multipart message is ``[task_id, event, event, …]`` —
the topic frame, then ONE OR MORE event frames (JSON objects) of that task in order. Batching
several events per message is what makes 50,000 events/s possible (a message costs several
microseconds whatever its size); at low rates a message carries one event.

A runner's events carry ``rseq``, the runner's own gap-free counter (1, 2, 3, …), so the
supervisor can tell a lost event from a late one. The supervisor stores each event under the
task's gap-free ``seq`` (which also numbers events the supervisor itself adds, such as "queued"
or "killed by signal") and republishes ``[task_id, event, …]`` with ``seq`` set (events-out).
``seq`` is the SSE ``id:``.
"""

from __future__ import annotations

from typing import Any, Literal

Level = Literal["INFO", "WARNING", "ERROR"]
LEVELS: tuple[str, ...] = ("INFO", "WARNING", "ERROR")

# Event kinds.
LOG = "log"  # a plain log line
PROGRESS = "progress"  # progress (0-100) changed; may carry a message
METRICS = "metrics"  # step or epoch metrics
STATUS = "status"  # status change; the final one ends the stream
RESULT = "result"  # inference result for one image (the task's ``res``)
KINDS: tuple[str, ...] = (LOG, PROGRESS, METRICS, STATUS, RESULT)

# Training stages (API.md §8).
EPOCH_START = "epoch_start"
TRAINING = "training"
VALIDATION = "validation"
EPOCH_END = "epoch_end"
COMPLETED = "completed"
STAGES: tuple[str, ...] = (EPOCH_START, TRAINING, VALIDATION, EPOCH_END, COMPLETED)

#: Fields an event may carry. ``timestamp``, ``level``, ``message`` and ``kind`` always;
#: the rest only when they apply (absent, never null, on the wire).
EVENT_FIELDS: tuple[str, ...] = (
    "seq",
    "rseq",
    "task_id",
    "timestamp",
    "kind",
    "level",
    "message",
    "stage",
    "metrics",
    "step",
    "progress",
    "epoch",
    "total_epochs",
    "status",
    "result",
    "source",
)

#: The ``metrics`` keys of an epoch (API.md §3.3).
EPOCH_METRICS: tuple[str, ...] = (
    "epoch",
    "total_epochs",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "macro_f1",
    "micro_f1",
    "mAP",
    "top1_acc",
    "top3_acc",
    "top5_acc",
    "precision",
    "recall",
    "learning_rate",
    "best_acc",
)


def check_event(event: dict[str, Any]) -> str | None:
    """Return why ``event`` is not a well-formed runner event, or None when it is."""
    if not isinstance(event.get("rseq"), int) or isinstance(event.get("rseq"), bool):
        return "rseq must be an integer"
    if event.get("kind") not in KINDS:
        return f"kind must be one of {KINDS}"
    if event.get("level") not in LEVELS:
        return f"level must be one of {LEVELS}"
    if not isinstance(event.get("message"), str):
        return "message must be a string"
    if not isinstance(event.get("timestamp"), str):
        return "timestamp must be a string"
    for key in ("metrics", "result"):
        if key in event and not isinstance(event[key], dict):
            return f"{key} must be an object"
    for key in ("step", "progress", "epoch", "total_epochs"):
        if key in event and (not isinstance(event[key], int) or isinstance(event[key], bool)):
            return f"{key} must be an integer"
    return None


def sse_view(event: dict[str, Any]) -> dict[str, Any]:
    """The event as an SSE ``data:`` object: everything except runner bookkeeping."""
    return {k: v for k, v in event.items() if k != "rseq"}
