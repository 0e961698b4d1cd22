"""What ``rfuav`` prints: JSON for scripts, aligned tables, log lines and the progress bar."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

TASK_HEADER = ["TASK", "TYPE", "STATUS", "PROG", "DEVICE", "CREATED", "MESSAGE"]


def emit_json(data: Any, out: TextIO | None = None) -> None:
    """``data`` as one indented JSON document (``--json``)."""
    (out or sys.stdout).write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def table(rows: list[list[str]], header: list[str], out: TextIO | None = None) -> None:
    """``header`` and ``rows`` in left-aligned columns, two spaces apart."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    (out or sys.stdout).writelines(
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() + "\n" for line in [header, *rows]
    )


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit in ("B", "K") else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.0f}s"


def task_line(task: dict[str, Any]) -> list[str]:
    """A task's row under ``TASK_HEADER``."""
    job = task.get("job") or task["task_type"]
    kind = task["task_type"] if job == task["task_type"] else f"{task['task_type']}/{job}"
    return [
        task["task_id"],
        kind,
        task["status"],
        f"{task.get('progress', 0)}%",
        str(task.get("device") or "-"),
        str(task.get("created_at") or "")[:19].replace("T", " "),
        task.get("message") or "",
    ]


def limits_table(limits: dict[str, dict[str, int]], usage: dict[str, dict[str, int]]) -> None:
    """One row per device: ``used/limit`` per task type (``-`` where the device has none)."""
    types = sorted({t for per in limits.values() for t in per})
    rows = [
        [dev, *(f"{usage.get(dev, {}).get(t, 0)}/{per[t]}" if t in per else "-" for t in types)]
        for dev, per in limits.items()
    ]
    table(rows, ["DEVICE", *(t.upper() for t in types)])


def log_line(event: dict[str, Any]) -> str:
    """An event as one line: time of day, level, message."""
    stamp = str(event.get("timestamp", ""))[11:19]
    return f"{stamp} {event.get('level', 'INFO'):7} {event.get('message', '')}"


class ProgressBar:
    """One status line (percent, epoch, loss, accuracy) redrawn under the log on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self.progress = 0
        self.epoch: str = ""
        self.loss: float | None = None
        self.acc: float | None = None

    def update(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("progress"), int):
            self.progress = event["progress"]
        if event.get("epoch") is not None:
            self.epoch = f"{event['epoch']}/{event.get('total_epochs', '?')}"
        metrics = event.get("metrics") or {}
        loss = metrics.get("loss", metrics.get("train_loss"))
        if isinstance(loss, (int, float)):
            self.loss = float(loss)
        acc = metrics.get("val_acc", metrics.get("acc"))
        if acc is None and self.acc is None:  # an epoch's training summary: only until a validation
            acc = metrics.get("train_acc")
        if isinstance(acc, (int, float)):
            self.acc = float(acc)

    def text(self) -> str:
        filled = self.progress * 24 // 100
        parts = [f"[{'#' * filled}{'.' * (24 - filled)}] {self.progress:3d}%"]
        if self.epoch:
            parts.append(f"epoch {self.epoch}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.acc is not None:
            parts.append(f"acc {self.acc:.1f}%")
        return "  ".join(parts)

    def clear(self) -> None:
        if self.live:
            self.out.write("\r\x1b[2K")

    def draw(self) -> None:
        if self.live:
            self.out.write("\r\x1b[2K" + self.text())
            self.out.flush()
