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


_KIND_SET = frozenset(KINDS)
_LEVEL_SET = frozenset(LEVELS)
_INT_FIELDS = ("step", "progress", "epoch", "total_epochs")
_OBJECT_FIELDS = ("metrics", "result")


def check_event(event: dict[str, Any]) -> str | None:
    """Return why ``event`` is not a well-formed runner event, or None when it is.

    On the supervisor's hot path (tens of thousands of calls a second): exact ``type`` checks
    (``bool`` is not an ``int`` here) and set look-ups only.
    """
    if type(event.get("rseq")) is not int:
        return "rseq must be an integer"
    if event.get("kind") not in _KIND_SET:
        return f"kind must be one of {KINDS}"
    if event.get("level") not in _LEVEL_SET:
        return f"level must be one of {LEVELS}"
    if type(event.get("message")) is not str:
        return "message must be a string"
    if type(event.get("timestamp")) is not str:
        return "timestamp must be a string"
    for key in _OBJECT_FIELDS:
        if key in event and type(event[key]) is not dict:
            return f"{key} must be an object"
    for key in _INT_FIELDS:
        if key in event and type(event[key]) is not int:
            return f"{key} must be an integer"
    return None


def sse_view(event: dict[str, Any]) -> dict[str, Any]:
    """The event as an SSE ``data:`` object: everything except runner bookkeeping."""
    return {k: v for k, v in event.items() if k != "rseq"}
