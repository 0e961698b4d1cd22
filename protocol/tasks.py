"""Task records: types, statuses, the submission spec and the ``TaskResponse`` view."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

TaskType = Literal["training", "inference", "preprocessing", "diagnostic", "serving"]
#: ``serving``: a deployment (``protocol.serving``), created by ``deploy``, never submitted.
TASK_TYPES: tuple[str, ...] = ("training", "inference", "preprocessing", "diagnostic", "serving")

#: The job a runner executes; a task type may have several (preprocessing: split, augment, crop).
Job = Literal["training", "inference", "split", "augment", "crop", "diagnostic"]
#: job -> its task type. (The function that runs a job: ``runner.entry.JOB_FUNCTIONS``.)
JOB_TASK_TYPES: dict[str, str] = {
    "training": "training",
    "inference": "inference",
    "split": "preprocessing",
    "augment": "preprocessing",
    "crop": "preprocessing",
    "diagnostic": "diagnostic",
}

Status = Literal["pending", "running", "completed", "failed", "cancelled"]
PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = (
    "pending",
    "running",
    "completed",
    "failed",
    "cancelled",
)
STATUSES: tuple[str, ...] = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
FINAL_STATUSES: frozenset[str] = frozenset({COMPLETED, FAILED, CANCELLED})
LIVE_STATUSES: frozenset[str] = frozenset({PENDING, RUNNING})

#: Custom task ids: safe as a directory name and in a URL path.
#: Use with ``fullmatch``: ``$`` would also match before a final newline.
TASK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
DEVICE_RE = re.compile(r"cpu|cuda|cuda:[0-9]{1,2}")

#: Keys of ``params`` that are secrets: stored for the runner, never shown, never logged.
SECRET_KEYS: frozenset[str] = frozenset({"token"})


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a client asks for. ``params`` are the job's own parameters (validated by web)."""

    task_type: TaskType
    job: Job
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    priority: int = 5
    task_id: str | None = None
    description: str | None = None
    strategy_type: str | None = None


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without secrets: safe to show and to log."""
    return {k: v for k, v in params.items() if k not in SECRET_KEYS}


@dataclass(slots=True)
class TaskRecord:
    """A task as the supervisor stores it. ``response()`` is the contract's ``TaskResponse``."""

    task_id: str
    task_type: str
    job: str
    params: dict[str, Any]
    requested_device: str
    priority: int
    description: str | None
    strategy_type: str | None
    status: str = PENDING
    message: str = "queued"
    progress: int = 0
    device: str | None = None
    current_epoch: int = 0
    total_epochs: int = 0
    latest_metrics: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None
    pid_started: float | None = None
    exit_code: int | None = None
    cgroup: str | None = None
    limits_enforced: bool | None = None
    last_seq: int = 0
    last_rseq: int = 0
    task_dir: str | None = None

    def duration(self, now: float) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else now
        return round(max(0.0, end - self.started_at), 3)

    def response(self, now: float) -> dict[str, Any]:
        """Every ``TaskResponse`` field (API.md §3.2); fields of other task types are null."""
        training = self.task_type == "training"
        inference = self.task_type == "inference"
        return {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "status": self.status,
            "message": self.message,
            "progress": self.progress,
            "device": self.device if self.device is not None else self.requested_device,
            "priority": self.priority,
            "description": self.description,
            "current_epoch": self.current_epoch if training else None,
            "total_epochs": self.total_epochs if training else None,
            "latest_metrics": self.latest_metrics if training else None,
            "duration": self.duration(now),
            "strategy_type": self.strategy_type,
            "res": self.result if inference else None,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            # Additions (the contract allows extra fields).
            "job": self.job,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "pid": self.pid,
            "exit_code": self.exit_code,
            "limits_enforced": self.limits_enforced,
            "last_seq": self.last_seq,
            "task_dir": self.task_dir,
            "params": public_params(self.params),
        }
